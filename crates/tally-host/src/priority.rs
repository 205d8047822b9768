//! R26: the process priority, low (nice 10) or normal (nice 0).

/// Lowers or restores the process priority. `priority` is `low` or `normal`.
pub fn set_priority(priority: &str) -> Result<(), String> {
    let nice = match priority {
        "low" => 10,
        "normal" => 0,
        other => return Err(format!("priority is `low` or `normal`, not `{other}`")),
    };
    // On Linux a nice value belongs to a thread: set it on every thread of the process (threads
    // made later inherit it from the thread that makes them).
    let tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for tid in tids {
        // SAFETY: setpriority only reads its integer arguments (which thread, which value); no
        // memory is passed to the kernel.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        if rc != 0 {
            return Err(format!(
                "cannot set priority {priority}: {} (raising it back needs root)",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

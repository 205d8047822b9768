//! A process's CPU time and memory, read from `/proc` (Linux): how the bench charges a host,
//! and the baseline server, for the work they did.

/// CPU time (user + system) a process has used, in µs, from `/proc/PID/stat`; `None` if the
/// process is gone or the file is not as expected.
pub fn cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_us_of(&stat)
}

fn cpu_us_of(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1e6 / CLOCK_TICKS)
}

/// Clock ticks per second in `/proc/PID/stat`: Linux's USER_HZ, fixed at 100 on every
/// architecture Tally runs on (whatever the kernel's own HZ), so no `sysconf` call is needed.
const CLOCK_TICKS: f64 = 100.0;

/// A memory figure of a process in MB, from `/proc/PID/status`: `"VmRSS:"` (now) or
/// `"VmHWM:"` (peak).
pub fn memory_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parens_does_not_shift_the_fields() {
        let stat = "42 (my (odd) proc) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_us_of(stat), Some(3_000_000.0));
        assert_eq!(cpu_us_of("42 (short) S 1"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(cpu_us(me).is_some());
        assert!(memory_mb(me, "VmRSS:").is_some_and(|mb| mb > 0.0));
    }
}

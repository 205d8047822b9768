//! Linux: the hardware probe reads sysfs and procfs; the agent transport is a Unix socket whose
//! server reads the peer's uid with `SO_PEERCRED`.
//!
//! Tested on Debian 12 (bookworm), x86_64 (docs/ARCHITECTURE.md, "Platforms"); it uses nothing
//! distribution-specific, and nothing architecture-specific beyond the
//! `model name` line of `/proc/cpuinfo` (absent on some ARM kernels: the `cpu` component is then
//! left out and the other four carry the fingerprint).

use std::fs;
use std::io;
use std::path::Path;

/// The agent's client end: a Unix stream socket.
pub type AgentStream = tokio::net::UnixStream;
/// The agent's listening socket.
pub type AgentListener = tokio::net::UnixListener;

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn disks() -> Option<String> {
    let mut ids: Vec<String> = fs::read_dir("/sys/block")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("device").exists()) // physical devices only, not loop/dm
        .filter_map(|e| {
            let dev = e.path().join("device");
            read_trim(&dev.join("serial"))
                .or_else(|| read_trim(&dev.join("wwid")))
                .or_else(|| {
                    read_trim(&dev.join("model"))
                        .map(|m| format!("{m}:{}", e.file_name().to_string_lossy()))
                })
        })
        .collect();
    ids.sort();
    (!ids.is_empty()).then(|| ids.join(","))
}

fn board() -> Option<String> {
    let dmi = Path::new("/sys/class/dmi/id");
    let parts: Vec<String> = [
        "board_vendor",
        "board_name",
        "product_name",
        "product_serial",
        "board_serial",
    ]
    .iter()
    .filter_map(|f| read_trim(&dmi.join(f)))
    .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn nics() -> Option<String> {
    let mut macs: Vec<String> = fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("device").exists()) // physical interfaces only
        .filter_map(|e| read_trim(&e.path().join("address")))
        .collect();
    macs.sort();
    (!macs.is_empty()).then(|| macs.join(","))
}

fn cpu() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
}

fn memory_gib() -> Option<String> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(((kb + (1 << 19)) >> 20).to_string())
}

/// The fingerprint's components this machine has (R12), as `(name, value)`.
pub fn hardware_components() -> Vec<(&'static str, String)> {
    [
        ("disk", disks()),
        ("board", board()),
        ("nic", nics()),
        ("cpu", cpu()),
        ("memory", memory_gib()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

/// This machine's name, as the client reports it to hosts (R27); `unknown` when it has none.
pub fn machine_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Connects to the agent listening at `socket`.
pub async fn connect_agent(socket: &Path) -> io::Result<AgentStream> {
    AgentStream::connect(socket).await
}

/// Whether something answers at `socket` now (a blocking check, for a stale socket file).
pub fn agent_answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Listens at `socket` (which must not exist) so that every local user can connect (R13: the
/// server checks who asks with [`peer_uid`]).
pub fn bind_agent(socket: &Path) -> io::Result<AgentListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = AgentListener::bind(socket)?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// The user id of the process at the other end, from the kernel (`SO_PEERCRED`).
pub fn peer_uid(stream: &AgentStream) -> io::Result<u32> {
    stream.peer_cred().map(|c| c.uid())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn this_machine_has_memory_and_a_name() {
        let found = hardware_components();
        assert!(found.iter().any(|(k, _)| *k == "memory"), "{found:?}");
        assert!(!machine_name().is_empty());
    }

    #[tokio::test]
    async fn a_local_connection_names_this_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        assert!(!agent_answers(&path));
        let listener = bind_agent(&path).unwrap();
        let client = connect_agent(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(agent_answers(&path));
        // SAFETY-free check: our own uid from procfs, compared with what the kernel says.
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let uid: u32 = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(peer_uid(&server).unwrap(), uid);
        drop(client);
    }
}

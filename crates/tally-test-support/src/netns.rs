//! A small network of the test's own: network namespaces on one bridge, so a test can cut one
//! machine's cable (`ip link set … down`: its packets vanish, nobody gets a FIN or RST) while
//! the others keep talking.
//!
//! [`NetLab::new`] makes a bridge in the test's namespace with `10.213.N.254/24` (a private
//! /24 no route of this machine uses; never any outside address), and [`NetLab::machine`] a
//! namespace `tl<id>-<name>` with a veth pair on that bridge and the next address `10.213.N.k`.
//! The test process itself reaches every machine through the bridge. Everything is deleted when
//! the lab is dropped, also when the test fails: processes still in its namespaces are killed
//! first (SIGKILL works on a stopped process too), then the namespaces, links and bridge.
//!
//! Needs root and `ip` (iproute2); [`NetLab::new`] returns `None` (after
//! [`crate::skip`]) where either is missing, outside CI.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Labs are made one at a time (choosing a free /24 and making it is not atomic).
static MAKING: Mutex<()> = Mutex::new(());

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// One namespace of a [`NetLab`]: a machine with one cable.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The namespace's name (for `ip netns exec`).
    pub netns: String,
    /// Its address on the lab's bridge.
    pub addr: Ipv4Addr,
    /// Its cable's end on the bridge (in the test's namespace).
    link: String,
}

impl Machine {
    /// `program` run inside this machine's namespace (`ip netns exec NAME program`; `ip` execs
    /// it, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }
}

/// A bridge and the namespaces on it; see the module docs.
#[derive(Debug)]
pub struct NetLab {
    id: String,
    bridge: String,
    subnet: u8,
    machines: Mutex<Vec<Machine>>,
}

impl NetLab {
    /// A new lab on a free `10.213.N.0/24`; `None` (skipped) without root or `ip`.
    pub fn new() -> Option<Self> {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        if !root || ip(&["netns", "list"]).is_err() {
            crate::skip(
                &crate::test_name(),
                "network namespaces need root and iproute2 (`ip netns`)",
            );
            return None;
        }
        let _making = MAKING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let used = must(&["-4", "addr"]) + &must(&["-4", "route"]);
        let seed = std::process::id() % 200;
        let subnet = (0..250u32)
            .map(|k| ((seed + k + NEXT.load(Ordering::SeqCst)) % 250) as u8)
            .find(|n| !used.contains(&format!("10.213.{n}.")))
            .unwrap_or_else(|| panic!("no free 10.213.N.0/24"));
        let id = format!(
            "{:x}{}",
            std::process::id() % 0xfff,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let bridge = format!("tlb{id}");
        must(&["link", "add", &bridge, "type", "bridge"]);
        let lab = Self {
            id,
            bridge,
            subnet,
            machines: Mutex::new(Vec::new()),
        };
        must(&[
            "addr",
            "add",
            &format!("10.213.{subnet}.254/24"),
            "dev",
            &lab.bridge,
        ]);
        must(&["link", "set", &lab.bridge, "up"]);
        Some(lab)
    }

    /// The test's own address on the bridge (a proxy the machines reach listens here).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 254)
    }

    /// A new machine `name` (letters and digits, short) with the next address.
    pub fn machine(&self, name: &str) -> Machine {
        let mut machines = self
            .machines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = machines.len() + 1;
        let netns = format!("tl{}-{name}", self.id);
        let link = format!("tlv{}m{k}", self.id);
        let inner = format!("tlp{}m{k}", self.id);
        let addr = Ipv4Addr::new(10, 213, self.subnet, k as u8);
        must(&["netns", "add", &netns]);
        // Recorded at once, so a failure below still cleans it up.
        machines.push(Machine {
            netns: netns.clone(),
            addr,
            link: link.clone(),
        });
        must(&["link", "add", &link, "type", "veth", "peer", "name", &inner]);
        must(&["link", "set", &inner, "netns", &netns]);
        must(&["link", "set", &link, "master", &self.bridge]);
        must(&["link", "set", &link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", netns.as_str()];
            all.extend_from_slice(args);
            must(&all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{addr}/24"), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        machines[k - 1].clone()
    }

    /// Cuts `machine`'s cable: its packets are dropped silently, both ways.
    pub fn cut(&self, machine: &Machine) {
        must(&["link", "set", &machine.link, "down"]);
    }

    /// Plugs `machine`'s cable back in.
    pub fn reconnect(&self, machine: &Machine) {
        must(&["link", "set", &machine.link, "up"]);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        let machines = std::mem::take(
            self.machines
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for m in &machines {
            // Whatever still runs in the namespace was started by this test.
            if let Ok(pids) = ip(&["netns", "pids", &m.netns]) {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = ip(&["link", "del", &m.link]);
            let _ = ip(&["netns", "del", &m.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two machines talk over the bridge; a cut cable silences one; dropping the lab removes
    // its namespaces and links.
    #[test]
    fn machines_talk_until_a_cable_is_cut_and_nothing_is_left_behind() {
        let Some(lab) = NetLab::new() else { return };
        let a = lab.machine("a");
        let b = lab.machine("b");
        let ping = |from: &Machine, to: Ipv4Addr| {
            from.command("ping")
                .args(["-c", "1", "-W", "1", &to.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let have_ping = Command::new("ping").arg("-V").output().is_ok();
        if have_ping {
            assert!(ping(&a, b.addr));
            assert!(ping(&a, lab.gateway()));
            lab.cut(&b);
            assert!(!ping(&a, b.addr));
            lab.reconnect(&b);
        }
        let listener = std::net::TcpListener::bind((lab.gateway(), 0)).expect("bind on bridge");
        let port = listener.local_addr().expect("addr").port();
        let ok = a
            .command("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/{}/{port}", lab.gateway())])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "a machine reaches the test through the bridge");
        let names = (a.netns.clone(), lab.bridge.clone());
        drop(lab);
        assert!(!must(&["netns", "list"]).contains(&names.0));
        assert!(ip(&["link", "show", &names.1]).is_err());
    }
}

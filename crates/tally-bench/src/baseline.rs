//! The raw baseline: a trivial server that reads 250 bytes and answers 250 bytes until the
//! peer closes: the physical limit of this machine for the activation traffic, measured in the
//! same run as the host so the report is a ratio, not a number that depends on the machine.

use std::net::SocketAddr;

use tally_proto::MAX_FRAME;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::BenchError;

/// The line the baseline server prints first (`tally bench --baseline-server`), followed by
/// its address.
pub const LISTENING: &str = "tally baseline listening on ";

/// Starts the baseline server on a free loopback port; it runs until the task is aborted.
pub async fn start() -> Result<(SocketAddr, JoinHandle<()>), BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; MAX_FRAME];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, handle))
}

/// The address in the baseline server's first line, if it is one.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix(LISTENING)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_a_frame_and_says_where_it_listens() {
        let (addr, handle) = start().await.expect("start");
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(&[7u8; MAX_FRAME]).await.expect("write");
        let mut back = [0u8; MAX_FRAME];
        s.read_exact(&mut back).await.expect("read");
        assert_eq!(back, [7u8; MAX_FRAME]);
        handle.abort();
        assert_eq!(parse_listening(&format!("{LISTENING}{addr}\n")), Some(addr));
        assert_eq!(parse_listening("something else"), None);
    }
}

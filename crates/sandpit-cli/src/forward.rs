//! `sandpit port-forward ID [LOCAL:]REMOTE`, with kubectl's habits: listens
//! on a local port (127.0.0.1 unless `--address` says otherwise) and
//! carries each connection, through the daemon's API, to port REMOTE on the
//! sandbox's own loopback. Runs until interrupted.

use futures_util::StreamExt;
use sandpit_proto as proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::{code_name, Client, Failure};

/// `[LOCAL:]REMOTE`: the local port (0: any free one) and the sandbox's.
pub(crate) fn parse_ports(spec: &str) -> Result<(u16, u16), String> {
    let port = |s: &str, what: &str| {
        s.parse::<u16>().map_err(|_| format!("{what} port {s:?} is not a number from 0 to 65535"))
    };
    let (local, remote) = match spec.split_once(':') {
        Some((l, r)) => (port(l, "local")?, port(r, "remote")?),
        None => {
            let p = port(spec, "remote")?;
            (p, p)
        }
    };
    if remote == 0 {
        return Err("the remote port must be from 1 to 65535".into());
    }
    Ok((local, remote))
}

pub(crate) async fn port_forward(client: Client, id: String, ports: &str, address: &str) -> Result<(), Failure> {
    let (local, remote) = parse_ports(ports).map_err(|e| Failure::Local(format!("port-forward: {e}")))?;
    let listener = TcpListener::bind((address, local))
        .await
        .map_err(|e| Failure::Local(format!("port-forward: listening on {address}:{local}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| Failure::Local(e.to_string()))?;
    say!("Forwarding from {bound} -> {id}:{remote}");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let (client, id) = (client.clone(), id.clone());
                    tokio::spawn(async move {
                        if let Err(why) = carry(client, &id, remote, sock).await {
                            complain!("port-forward: connection from {peer}: {why}");
                        }
                    });
                }
                Err(e) => complain!("port-forward: accept: {e}"),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// A daemon's notice, on stderr, once however many connections carry it.
fn notice(text: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.iter().any(|s| s == text) {
        complain!("sandpit: {text}");
        seen.push(text.to_string());
    }
}

/// One connection, both ways, until the sandbox's side closes.
async fn carry(mut client: Client, id: &str, port: u16, sock: TcpStream) -> Result<(), String> {
    let _ = sock.set_nodelay(true);
    let (mut from_local, mut to_local) = sock.into_split();
    let (tx, rx) = mpsc::channel::<proto::PortForwardRequest>(8);
    let header = proto::PortForwardHeader { id: id.to_string(), port: u32::from(port) };
    let _ = tx.send(proto::PortForwardRequest { part: Some(proto::port_forward_request::Part::Header(header)) }).await;
    let upload = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from_local.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let part = proto::port_forward_request::Part::Data(buf[..n].to_vec());
                    if tx.send(proto::PortForwardRequest { part: Some(part) }).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping the sender half-closes the sandbox's side.
    });
    let result = async {
        let mut answers = client
            .port_forward(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("{}: {}", code_name(s.code()), s.message()))?
            .into_inner();
        while let Some(msg) = answers.next().await {
            let msg = msg.map_err(|s| format!("{}: {}", code_name(s.code()), s.message()))?;
            if !msg.notice.is_empty() {
                notice(&msg.notice);
            }
            to_local.write_all(&msg.data).await.map_err(|e| e.to_string())?;
        }
        let _ = to_local.shutdown().await;
        Ok(())
    }
    .await;
    upload.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_as_kubectl_reads_them() {
        assert_eq!(parse_ports("8888"), Ok((8888, 8888)));
        assert_eq!(parse_ports("9000:8888"), Ok((9000, 8888)));
        assert_eq!(parse_ports("0:8888"), Ok((0, 8888)));
        assert!(parse_ports("8888:0").is_err());
        assert!(parse_ports("http").unwrap_err().contains("remote port"));
        assert!(parse_ports("70000:80").unwrap_err().contains("local port"));
    }
}

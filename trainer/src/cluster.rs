//! Who trains with whom: the hosts of a multi-node run and the exchange of NCCL's unique id.
//!
//! A SageMaker training job tells every instance the job's hosts and its own name
//! (`SM_HOSTS='["algo-1","algo-2"]'`, `SM_CURRENT_HOST=algo-2`). The first host in that list is
//! node 0: it creates the communicator's unique id (128 opaque bytes from `ncclGetUniqueId`) and
//! serves it over TCP; every other node connects to it and reads the bytes. Global ranks are
//! `node * gpus_per_node + local_gpu`. Nothing here needs a GPU, so the exchange is tested on
//! loopback.

use crate::error::{Result, TrainerError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Size of `ncclUniqueId`.
pub const ID_BYTES: usize = 128;

/// Port node 0 serves the id on, unless `WF_RENDEZVOUS_PORT` says otherwise (SageMaker leaves
/// ports between instances of a job open; 29500 is torch.distributed's habit).
pub const DEFAULT_PORT: u16 = 29500;

const MAGIC: &[u8; 8] = b"wf-nccl1";

/// This node's place among the nodes of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub hosts: Vec<String>,
    /// Index of this node in `hosts`.
    pub node: usize,
    pub port: u16,
}

fn err(detail: impl Into<String>) -> TrainerError {
    TrainerError::Ddp {
        detail: detail.into(),
    }
}

impl Cluster {
    /// A run on this machine alone.
    pub fn single() -> Cluster {
        Cluster {
            hosts: vec!["localhost".into()],
            node: 0,
            port: DEFAULT_PORT,
        }
    }

    /// From SageMaker's training environment, or `None` outside one: `SM_HOSTS` and
    /// `SM_CURRENT_HOST` when set (SageMaker's framework containers), else the job's
    /// `input/config/resourceconfig.json` under `$WF_SM_ROOT` or `/opt/ml` (what SageMaker gives
    /// every container). A malformed environment is an error, not a silent single-node run.
    pub fn from_env() -> Result<Option<Cluster>> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let port = match get("WF_RENDEZVOUS_PORT") {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse()
                .map_err(|_| err(format!("WF_RENDEZVOUS_PORT={p} is not a port number")))?,
        };
        if let (Some(hosts), Some(current)) = (get("SM_HOSTS"), get("SM_CURRENT_HOST")) {
            return Cluster::parse(&hosts, &current, port).map(Some);
        }
        let root = get("WF_SM_ROOT").unwrap_or_else(|| "/opt/ml".into());
        let path = std::path::Path::new(&root).join("input/config/resourceconfig.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => Cluster::from_resource_config(&text, port)
                .map(Some)
                .map_err(|e| err(format!("{}: {e}", path.display()))),
            Err(_) => Ok(None),
        }
    }

    /// SageMaker's `resourceconfig.json`: `{"current_host": "algo-1", "hosts": ["algo-1", ...]}`.
    pub fn from_resource_config(json: &str, port: u16) -> Result<Cluster> {
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| err(format!("resourceconfig.json is not JSON: {e}")))?;
        let current = v["current_host"]
            .as_str()
            .ok_or_else(|| err("resourceconfig.json has no current_host"))?;
        Cluster::parse(&v["hosts"].to_string(), current, port)
    }

    /// `hosts_json` as SageMaker writes `SM_HOSTS` (a JSON list of names). The list's order is
    /// kept: every instance of a job gets the same list, its first host is node 0 (the one that
    /// serves the NCCL id, and the one `wf worker` publishes from).
    pub fn parse(hosts_json: &str, current: &str, port: u16) -> Result<Cluster> {
        let hosts: Vec<String> = serde_json::from_str(hosts_json)
            .map_err(|e| err(format!("SM_HOSTS is not a JSON list of host names: {e}")))?;
        if hosts.is_empty() {
            return Err(err("SM_HOSTS lists no host"));
        }
        let unique: std::collections::BTreeSet<&String> = hosts.iter().collect();
        if unique.len() != hosts.len() {
            return Err(err(format!("SM_HOSTS lists a host twice: {hosts:?}")));
        }
        let node = hosts.iter().position(|h| h == current).ok_or_else(|| {
            err(format!(
                "SM_CURRENT_HOST {current} is not in SM_HOSTS {hosts:?}"
            ))
        })?;
        Ok(Cluster { hosts, node, port })
    }

    pub fn nodes(&self) -> usize {
        self.hosts.len()
    }

    /// Global rank of local GPU `local` when every node trains on `per_node` GPUs.
    pub fn rank(&self, local: usize, per_node: usize) -> usize {
        self.node * per_node + local
    }
}

/// Node 0: serves `id` to `peers` connections on `listener`, each answered with the magic, the
/// world size and the id (so a node started with a different GPU count fails instead of hanging
/// in NCCL's init). Gives up after `timeout`.
pub fn serve_id(
    listener: TcpListener,
    id: &[u8; ID_BYTES],
    world: usize,
    peers: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| err(format!("rendezvous listener: {e}")))?;
    let mut served = 0;
    while served < peers {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| err(format!("rendezvous: {e}")))?;
                let mut msg = Vec::with_capacity(MAGIC.len() + 8 + ID_BYTES);
                msg.extend_from_slice(MAGIC);
                msg.extend_from_slice(&(world as u64).to_le_bytes());
                msg.extend_from_slice(id);
                s.write_all(&msg)
                    .map_err(|e| err(format!("rendezvous: sending the id: {e}")))?;
                served += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(err(format!(
                        "rendezvous: only {served} of {peers} other nodes connected within {}s",
                        timeout.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(err(format!("rendezvous: accept: {e}"))),
        }
    }
    Ok(())
}

/// Other nodes: reads the id from node 0 at `addr`, retrying until `timeout` (node 0 may start
/// later). Fails when node 0 announces a different world size.
pub fn fetch_id(addr: &str, world: usize, timeout: Duration) -> Result<[u8; ID_BYTES]> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("never tried");
    while Instant::now() < deadline {
        let addrs: Vec<SocketAddr> = match addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last = format!("resolving {addr}: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| err(format!("rendezvous: {e}")))?;
                    let mut buf = [0u8; 8 + 8 + ID_BYTES];
                    s.read_exact(&mut buf)
                        .map_err(|e| err(format!("rendezvous: reading the id from {a}: {e}")))?;
                    if &buf[..8] != MAGIC {
                        return Err(err(format!("rendezvous: {a} is not a wf node 0")));
                    }
                    let theirs = u64::from_le_bytes(buf[8..16].try_into().unwrap_or([0; 8]));
                    if theirs != world as u64 {
                        return Err(err(format!(
                            "rendezvous: node 0 trains with {theirs} replicas, this node expects {world} \
                             (do all nodes have the same number of GPUs?)"
                        )));
                    }
                    let mut id = [0u8; ID_BYTES];
                    id.copy_from_slice(&buf[16..]);
                    return Ok(id);
                }
                Err(e) => last = format!("connecting to {a}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(err(format!(
        "rendezvous: no id from node 0 at {addr} within {}s ({last})",
        timeout.as_secs()
    )))
}

/// The id every node's replicas use: node 0 makes it with `make` and serves it to the others;
/// the others fetch it from node 0.
pub fn exchange_id(
    cluster: &Cluster,
    world: usize,
    timeout: Duration,
    make: impl FnOnce() -> Result<[u8; ID_BYTES]>,
) -> Result<[u8; ID_BYTES]> {
    if cluster.node == 0 {
        let id = make()?;
        if cluster.nodes() > 1 {
            let listener = TcpListener::bind(("0.0.0.0", cluster.port)).map_err(|e| {
                err(format!(
                    "rendezvous: listening on port {}: {e}",
                    cluster.port
                ))
            })?;
            let peers = cluster.nodes() - 1;
            // Served in the background: NCCL's init on this node must start while others connect.
            std::thread::spawn(move || {
                if let Err(e) = serve_id(listener, &id, world, peers, timeout) {
                    eprintln!("warning: {e}");
                }
            });
        }
        Ok(id)
    } else {
        fetch_id(
            &format!("{}:{}", cluster.hosts[0], cluster.port),
            world,
            timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sagemaker_hosts_give_nodes_and_ranks() {
        let c = Cluster::parse(r#"["algo-1","algo-2","algo-3"]"#, "algo-2", 1234).unwrap();
        assert_eq!(c.hosts, ["algo-1", "algo-2", "algo-3"]);
        assert_eq!((c.node, c.nodes(), c.port), (1, 3, 1234));
        assert_eq!(c.rank(3, 8), 11);
        let rc = r#"{"current_host": "algo-3", "hosts": ["algo-1", "algo-2", "algo-3"],
                     "network_interface_name": "eth0"}"#;
        assert_eq!(
            Cluster::from_resource_config(rc, 1234).unwrap(),
            Cluster { node: 2, ..c }
        );
        assert!(Cluster::from_resource_config(r#"{"hosts": ["algo-1"]}"#, 1).is_err());
        assert!(Cluster::parse(r#"["algo-1","algo-1"]"#, "algo-1", 1).is_err());
        assert!(Cluster::parse(r#"["algo-1"]"#, "algo-9", 1).is_err());
        assert!(Cluster::parse("algo-1,algo-2", "algo-1", 1).is_err());
        assert!(Cluster::parse("[]", "algo-1", 1).is_err());
    }

    #[test]
    fn node_zero_serves_the_id_to_every_other_node_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut id = [0u8; ID_BYTES];
        id.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8 ^ 0x5a);
        let server =
            std::thread::spawn(move || serve_id(listener, &id, 6, 2, Duration::from_secs(20)));
        let peers: Vec<_> = (0..2)
            .map(|_| {
                let a = addr.clone();
                std::thread::spawn(move || fetch_id(&a, 6, Duration::from_secs(20)))
            })
            .collect();
        for p in peers {
            assert_eq!(p.join().unwrap().unwrap(), id);
        }
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_world_size_mismatch_or_a_missing_node_zero_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let id = [7u8; ID_BYTES];
        let server =
            std::thread::spawn(move || serve_id(listener, &id, 4, 1, Duration::from_secs(20)));
        let e = fetch_id(&addr, 8, Duration::from_secs(20)).unwrap_err();
        assert!(e.to_string().contains("same number of GPUs"), "{e}");
        server.join().unwrap().unwrap();
        // Nobody listens there any more: a bounded wait, then a clear error.
        let e = fetch_id(&addr, 4, Duration::from_millis(600)).unwrap_err();
        assert!(e.to_string().contains("no id from node 0"), "{e}");
        // Node 0 gives up on peers that never come.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = serve_id(listener, &id, 2, 1, Duration::from_millis(300)).unwrap_err();
        assert!(e.to_string().contains("0 of 1"), "{e}");
    }
}

//! A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries
//! on a fresh data directory in /tmp, listening on loopback at a free port,
//! one per test process (each test gets a database of its own in it). As
//! root it runs as the `postgres` user (the server refuses root). It dies
//! with the process (PR_SET_PDEATHSIG), and the next test process removes
//! data directories whose process is gone.
//!
//! The server trades durability for speed (`fsync=off`), which a test
//! does not need; `SANDPIT_TEST_POSTGRES_DURABLE=1` (the benchmark sets it)
//! keeps fsync and full-page writes, with `synchronous_commit=off`: the
//! guarantee the SQLite store gives (WAL, `synchronous=NORMAL`), that a
//! crash of the daemon loses nothing committed and one of the machine may
//! lose the last moments.
//!
//! It serves TLS too (a certificate for `localhost`, signed by a CA made for
//! the run: [`ca_file`]), so that `sslmode=require` is tested for real.
//!
//! `SANDPIT_TEST_POSTGRES_URL` points the tests at a server of your own
//! instead (its user may create databases). With neither, [`database`]
//! answers `None` and the tests say they were skipped, unless
//! `SANDPIT_REQUIRE_POSTGRES` is set (as `.ci/run` does), when it panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const DIR_PREFIX: &str = "sandpit-test-pg-";

/// A URL of a new, empty database for one test, or `None` when no server
/// can be had (see the module's documentation).
pub async fn database() -> Option<String> {
    let server = match server() {
        Ok(url) => url,
        Err(why) => {
            if std::env::var_os("SANDPIT_REQUIRE_POSTGRES").is_some() {
                panic!("SANDPIT_REQUIRE_POSTGRES is set but no PostgreSQL server could be had: {why}");
            }
            eprintln!("skipped: no PostgreSQL for this test ({why})");
            return None;
        }
    };
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("random");
    let name = format!("sandpit_t_{}", hex::encode(b));
    // The server listens a moment before it accepts sessions ("the
    // database system is starting up"): try for a while.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let (client, connection) = loop {
        match tokio_postgres::connect(&server, tokio_postgres::NoTls).await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to the test PostgreSQL server at {server}: {e}"),
        }
    };
    let conn = tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create a test database");
    drop(client);
    let _ = conn.await;
    Some(with_database(&server, &name))
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base.rfind('/').filter(|i| *i > base.find("://").map_or(0, |s| s + 2)).unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The PEM file of the CA that signed the test server's certificate (for
/// `localhost`), once the server is up; `None` for a server of your own.
pub fn ca_file() -> Option<PathBuf> {
    CA.get().cloned()
}

static CA: OnceLock<PathBuf> = OnceLock::new();

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signed,
/// written to `dir`: (ca.crt, server.crt, server.key).
fn certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let e = |e: rcgen::Error| e.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.distinguished_name.push(DnType::CommonName, "sandpit test PostgreSQL CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_pem = ca.self_signed(&ca_key).map_err(e)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(e)?;
    let paths = (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"));
    let write = |p: &Path, s: &str| std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()));
    write(&paths.0, &ca_pem)?;
    write(&paths.1, &cert.pem())?;
    write(&paths.2, &key.serialize_pem())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&paths.2, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    Ok(paths)
}

/// The URL of the process's server (started on first use).
pub fn server() -> Result<String, String> {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| match std::env::var("SANDPIT_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Ok(url),
            _ => start(),
        })
        .clone()
}

fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no /usr/lib/postgresql (install Debian's postgresql package)".to_string())?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("postgres").is_file() && b.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| "no initdb and postgres under /usr/lib/postgresql/*/bin".into())
}

/// The `postgres` user's (uid, gid), when this process is root.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam with a valid C string; the fields are read at once, before any other call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("running as root and there is no postgres user to run the server as".into());
    }
    // SAFETY: checked non-null above.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// Removes data directories of test processes that are gone.
fn sweep() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(DIR_PREFIX).and_then(|r| r.split('-').next()?.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn command(path: PathBuf, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(path);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = owner {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid, which clears it: the server dies with this process.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

fn start() -> Result<String, String> {
    sweep();
    let bin = bin_dir()?;
    let owner = run_as()?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let data = dir.join("data");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let out = command(bin.join("initdb"), owner)
        .args(["--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let (ca, cert, key) = certificates(&dir)?;
    if let Some((uid, gid)) = owner {
        for f in [&cert, &key] {
            std::os::unix::fs::chown(f, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", f.display()))?;
        }
    }
    let tls = [
        "-c".to_string(),
        "ssl=on".to_string(),
        "-c".to_string(),
        format!("ssl_cert_file={}", cert.display()),
        "-c".to_string(),
        format!("ssl_key_file={}", key.display()),
    ];
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    // Started from a thread that lives as long as the process: PDEATHSIG
    // follows the thread that forked, not the process.
    let (tx, rx) = std::sync::mpsc::channel();
    let (postgres, log) = (bin.join("postgres"), dir.join("server.log"));
    let durable = std::env::var_os("SANDPIT_TEST_POSTGRES_DURABLE").is_some();
    let durability: &[&str] = if durable {
        &["-c", "synchronous_commit=off"]
    } else {
        &["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    };
    std::thread::Builder::new()
        .name("test-postgres".into())
        .spawn(move || {
            let spawned = std::fs::File::create(&log).and_then(|log| {
                command(postgres, owner)
                    .arg("-D")
                    .arg(&data)
                    .args(["-p", &port.to_string(), "-k", "", "-c", "listen_addresses=127.0.0.1"])
                    .args(durability)
                    .args(&tls)
                    .args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
            });
            let _ = tx.send(spawned.map(|_| ()).map_err(|e| format!("postgres: {e}")));
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())??;
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            return Err(format!("the test PostgreSQL did not start in 60 s: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = CA.set(ca);
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

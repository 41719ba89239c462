//! Files in the daemon's data directory that the CLI reads too.

use std::path::PathBuf;

/// File in the data directory holding the generated local token.
pub const LOCAL_TOKEN_FILE: &str = "local-token";
/// File in the data directory holding the address the daemon listens on.
pub const ADDR_FILE: &str = "sandpitd.addr";
/// File in the data directory holding the address metrics are served on.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";
/// File in the data directory holding the dashboard's URL.
pub const DASHBOARD_ADDR_FILE: &str = "dashboard.addr";
/// The store's file in the data directory.
pub const DATABASE_FILE: &str = "sandpit.db";

/// `$XDG_DATA_HOME/sandpit`, else `~/.local/share/sandpit`, else `./sandpit-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("sandpit");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/share/sandpit");
    }
    PathBuf::from("./sandpit-data")
}

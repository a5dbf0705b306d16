//! What `berth serve` leaves in its data dir for the CLI on the same machine, so commands
//! run there find the controller without flags. The server writes it, the client reads it;
//! neither imports the other.

use berth_shared::Digest;

/// `controller.json` in the data dir.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ControllerInfo {
    /// The URL the CLI on this machine should use.
    pub local_url: String,
    pub advertise_url: String,
    pub ca_hash: Digest,
}

pub const INFO_FILE: &str = "controller.json";

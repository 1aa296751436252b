//! A workload for node-agent tests: calls the SPIFFE Workload API on a
//! socket with the `spiffe` crate (a client this project did not write) and
//! prints what it got, so tests can run it as other uids.
//!
//! ```text
//! workload-probe x509 SOCKET            one line per SVID: "svid SPIFFE_ID"
//! workload-probe jwt SOCKET AUDIENCE    one line per JWT-SVID: "jwt SPIFFE_ID"
//! workload-probe watch SOCKET SECONDS   "update ID,ID…" per stream message
//! ```
//! Failures print "error: …" and exit 3.

use std::process::ExitCode;
use std::time::Duration;

use spiffe::WorkloadApiClient;
use tokio_stream::StreamExt;

async fn run(args: &[String]) -> Result<(), String> {
    let [mode, socket, rest @ ..] = args else {
        return Err("usage: workload-probe x509|jwt|watch SOCKET [ARG]".into());
    };
    let client = WorkloadApiClient::connect_to(format!("unix:{socket}"))
        .await
        .map_err(|e| e.to_string())?;
    match mode.as_str() {
        "x509" => {
            for svid in client
                .fetch_all_x509_svids()
                .await
                .map_err(|e| e.to_string())?
            {
                println!("svid {}", svid.spiffe_id());
            }
        }
        "jwt" => {
            let audience = rest.first().ok_or("jwt needs an audience")?;
            let svids = client
                .fetch_all_jwt_svids([audience.as_str()], None)
                .await
                .map_err(|e| e.to_string())?;
            for svid in svids {
                println!("jwt {}", svid.spiffe_id());
            }
        }
        "watch" => {
            let seconds: u64 = rest
                .first()
                .and_then(|s| s.parse().ok())
                .ok_or("watch needs SECONDS")?;
            let mut stream = client
                .stream_x509_svids()
                .await
                .map_err(|e| e.to_string())?;
            let watch = async {
                while let Some(update) = stream.next().await {
                    let svid = update.map_err(|e| e.to_string())?;
                    println!("update {}", svid.spiffe_id());
                }
                Err::<(), String>("stream ended".into())
            };
            match tokio::time::timeout(Duration::from_secs(seconds), watch).await {
                Ok(result) => result?,
                Err(_) => println!("timeout"),
            }
        }
        other => return Err(format!("unknown mode {other}")),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            ExitCode::from(3)
        }
    }
}

//! `mydata card-agent`: the local card reader service (see mydata_card::agent), and the demo's
//! test cards.

use anyhow::Context;
use clap::Args;
use mydata_card::agent::{Agent, AgentConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct CardAgentArgs {
    /// The test card: a PKCS#12 file with its public chain beside it as FILE.pem (`mydata demo`
    /// writes one per synthetic person and company under <data-dir>/demo/cards/, PIN 123456).
    #[arg(long, value_name = "FILE.p12")]
    card: PathBuf,
    /// Loopback address and port to listen on.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:61161", value_parser = crate::listen_addr)]
    listen: SocketAddr,
    /// Web origin allowed to call the agent from a browser (repeat for several). The default
    /// allows `mydata demo` on its default port by address and by name (passkeys need the name).
    #[arg(
        long = "allow-origin",
        value_name = "ORIGIN",
        default_values_t = ["http://127.0.0.1:8080".to_owned(), "http://localhost:8080".to_owned()]
    )]
    allow_origin: Vec<String>,
    /// File keeping the count of wrong PINs [default: FILE.p12.state.json beside the card]
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

pub async fn run(args: CardAgentArgs) -> anyhow::Result<()> {
    mydata_server::telemetry::init(mydata_server::config::LogFormat::Pretty, "info");
    mydata_card::agent::check_listen(args.listen)?;
    let agent = Agent::open(&AgentConfig {
        card: args.card.clone(),
        state: args.state,
        allowed_origins: args.allow_origin.clone(),
    })
    .context("cannot load the card")?;
    let agent = Arc::new(agent);
    let (listener, router) = mydata_card::agent::bind(agent.clone(), args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let tries = match agent.pin_tries_left() {
        Some(0) => "LOCKED after three wrong PINs (only a new card can be used)".to_owned(),
        Some(n) => format!("{n} PIN tries left"),
        None => String::new(),
    };
    eprintln!(
        "card agent ready: card {} ({}), {tries}; allowed origin(s): {}; Ctrl-C stops it.",
        agent.info().subject,
        agent.info().serial_number,
        args.allow_origin.join(", ")
    );
    println!("http://{addr}");
    axum::serve(listener, router)
        .with_graceful_shutdown(mydata_server::shutdown_signal())
        .await
        .context("the card agent stopped")
}

/// Makes the demo's test cards once (and refreshes their CRLs at every start).
pub async fn write_demo_cards(data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.to_owned();
    let now = mydata_core::Clock::now(&mydata_core::SystemClock);
    let report =
        tokio::task::spawn_blocking(move || mydata_card::demo::write_demo_cards(&dir, now))
            .await
            .context("card generation did not finish")?
            .context("cannot write the demo's test cards")?;
    tracing::info!(
        cards = report.cards,
        created = report.created,
        dir = %report.dir.display(),
        "test cards for the certificate login (PIN 123456)"
    );
    Ok(())
}

/// Points certificate sign-in at the demo cards' CA: the root as identity trust anchor and its
/// CRLs (as listed in the cards' `index.json`), unless the configuration names its own.
pub fn configure_identity(settings: &mut mydata_server::Settings) -> anyhow::Result<()> {
    let dir = mydata_card::demo::cards_dir(&settings.data_dir);
    let path = dir.join("index.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let index: mydata_card::demo::Index = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged; delete the folder", path.display()))?;
    let id = &mut settings.identity;
    if id.certificate_roots.is_empty() {
        id.certificate_roots = vec![dir.join(&index.trust_anchor)];
    }
    if id.certificate_crls.is_empty() {
        id.certificate_crls = index.crls.iter().map(|c| dir.join(c)).collect();
    }
    Ok(())
}

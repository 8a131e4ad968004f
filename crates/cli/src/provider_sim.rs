//! `mydata provider-sim`: runs the simulated agencies over HTTP for a platform to fetch from.

use anyhow::Context;
use clap::Args;
use mydata_package::PlatformKeys;
use mydata_provider_sim::server::{DEFAULT_SEED, Simulator, SimulatorConfig, router};
use mydata_server::receipts::PlatformKey;
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File the generated platform key is written to when no `--platform-key` is given.
const GENERATED_KEY: &str = "provider-sim-platform-key.pem";

#[derive(Debug, Args)]
pub struct ProviderSimArgs {
    /// Address and port to listen on. The simulator holds synthetic data only, but it has no TLS:
    /// keep it on loopback.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8090", value_parser = crate::listen_addr)]
    listen: SocketAddr,
    /// Speed-up of dataset preparation: 60 makes a 60-minute dataset ready in one minute.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    time_scale: f64,
    /// The platform's keys whose tokens the agencies accept: a PEM file (P-256 public key, or
    /// PKCS#8 private key) or the platform's JWK set (saved from /.well-known/mydata/jwks.json; a
    /// token is checked with the key its `kid` names). Repeat it while the platform replaces its
    /// key. Without it a fresh key pair is generated and its private key written to
    /// DATA_DIR/provider-sim-platform-key.pem (mode 0600) for a local platform to use.
    #[arg(long, value_name = "PEM_OR_JWKS")]
    platform_key: Vec<PathBuf>,
    /// The platform's published JWK set (https://PLATFORM/.well-known/mydata/jwks.json), read on
    /// the first request and again when a token names a key not in it (the platform replaced its
    /// key), as an agency integrating the platform does; its keys are accepted besides any
    /// --platform-key. With it, no key is generated.
    #[arg(long, value_name = "URL")]
    platform_jwks: Option<String>,
    /// Folder for the generated platform key [default: ./mydata-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Seed of the synthetic population (same seed, same people and data).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Bearer token of the fault-injection API (/admin/faults/{agency_id}); unset disables it.
    #[arg(
        long,
        env = "MYDATA_SIM_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    admin_token: Option<String>,
    /// Font file for the PDF datasets: TTF, OTF or TTC with Traditional Chinese glyphs (a TTC's
    /// Traditional Chinese face is chosen). Default: the fonts-noto-cjk or fonts-wqy install path.
    #[arg(long, env = "MYDATA_PDF_FONT", value_name = "FILE")]
    pdf_font: Option<PathBuf>,
    /// Answer PDF datasets without their PDF (machine-readable files only), for load runs.
    #[arg(long)]
    no_pdf: bool,
}

/// Bind, print the URL on the first line of stdout once ready, serve until SIGTERM or Ctrl-C.
pub async fn run(args: ProviderSimArgs) -> anyhow::Result<()> {
    // The port first: a simulator started twice fails before it replaces the first one's key.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let (platform_keys, generated) = if args.platform_key.is_empty() && args.platform_jwks.is_none()
    {
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("mydata-data"));
        let (key, path) = generate_key(&dir)?;
        (PlatformKeys::from(key), Some(path))
    } else {
        let mut keys = Vec::new();
        for path in &args.platform_key {
            keys.extend(read_keys(path)?);
        }
        (mydata_server::receipts::key_set(keys), None)
    };
    let mut config = SimulatorConfig::with_platform_keys(platform_keys);
    config.platform_jwks_url = args.platform_jwks;
    config.seed = args.seed;
    config.time_scale = args.time_scale;
    config.admin_token = args.admin_token;
    config.pdf_font = args.pdf_font;
    config.render_pdf = !args.no_pdf;
    let sim = Simulator::new(config, Arc::new(mydata_core::SystemClock))?;
    let app = router(Arc::new(sim)).await;
    let addr = listener.local_addr()?;
    println!("http://{addr}");
    if let Some(path) = generated {
        println!(
            "platform private key (for request tokens): {}",
            path.display()
        );
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(mydata_server::shutdown_signal())
        .await?;
    Ok(())
}

/// The keys of a PEM file (a public key, or a private key's public half) or a JWK set, each with
/// the `kid` the set gives it.
fn read_keys(path: &Path) -> anyhow::Result<Vec<PlatformKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read platform key {}", path.display()))?;
    if let Ok(k) = SigningKey::from_pkcs8_pem(&text) {
        let key = *k.verifying_key();
        return Ok(vec![PlatformKey { kid: None, key }]);
    }
    let keys = mydata_server::receipts::read_platform_keys(text.as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "{} is neither a P-256 public or PKCS#8 private key (PEM) nor a JWK set: {e}",
            path.display()
        )
    })?;
    Ok(keys)
}

fn generate_key(dir: &Path) -> anyhow::Result<(VerifyingKey, PathBuf)> {
    let key = SigningKey::try_generate().map_err(|e| anyhow::anyhow!("generating a key: {e}"))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(GENERATED_KEY);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut f, pem.as_bytes())?;
    Ok((*key.verifying_key(), path))
}

/// The simulated agencies running inside `demo`, on a loopback port of their own.
#[derive(Debug)]
pub struct InProcess {
    pub base: String,
    /// A synthetic person's ID number and a company's 統一編號, to try the dev endpoints with.
    pub sample_person: String,
    pub sample_company: String,
    root_file: PathBuf,
}

impl InProcess {
    /// Points the platform at these agencies and makes it trust their CA (root file and CRL URL),
    /// exactly as `serve` would be configured for a real agency PKI.
    pub fn configure(&self, settings: &mut mydata_server::Settings) {
        let a = &mut settings.agencies;
        a.base_url = self.base.clone();
        a.endpoints.clear();
        a.trust_roots = vec![self.root_file.clone()];
        a.crl_files.clear();
        a.crl_urls = vec![format!("{}/ca/crl.pem", self.base)];
    }
}

/// Starts the simulator for `demo`: accepts tokens of the platform key in `settings`, writes its
/// fresh root certificate to `<data_dir>/demo/agency-root.pem`.
pub async fn start_in_process(
    settings: &mydata_server::Settings,
    time_scale: f64,
    render_pdf: bool,
) -> anyhow::Result<InProcess> {
    // Every key the platform publishes, as an agency reading its JWK set would.
    let platform = mydata_server::keys::load_platform_keys(settings)?;
    let mut config = SimulatorConfig::with_platform_keys(platform.published);
    config.time_scale = time_scale;
    config.render_pdf = render_pdf;
    let sim = Simulator::new(config, Arc::new(mydata_core::SystemClock))?;
    let dir = settings.data_dir.join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let root_file = dir.join("agency-root.pem");
    std::fs::write(&root_file, sim.root_pem())
        .with_context(|| format!("cannot write {}", root_file.display()))?;
    write_demo_people(&dir, &sim)?;
    let sample = |v: Option<&str>| v.unwrap_or_default().to_owned();
    let sample_person = sample(sim.population().persons().first().map(|p| p.id.as_str()));
    let sample_company = sample(sim.population().companies().first().map(|c| c.ban.as_str()));
    let app = router(Arc::new(sim)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the simulated agencies")?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "simulated agencies stopped");
        }
    });
    Ok(InProcess {
        base,
        sample_person,
        sample_company,
        root_file,
    })
}

/// How many synthetic people `people.json` describes (the outbox page shows the first few).
const DEMO_PEOPLE: usize = 20;

/// Writes `<dir>/people.json`: for the first synthetic people, what the dual-ID and health-card
/// sign-ins ask for (synthetic data), so a person trying the demo can use those methods.
fn write_demo_people(dir: &std::path::Path, sim: &Simulator) -> anyhow::Result<()> {
    let pop = sim.population();
    let people: Vec<serde_json::Value> = pop
        .persons()
        .iter()
        .take(DEMO_PEOPLE)
        .map(|p| {
            serde_json::json!({
                "id_number": p.id.as_str(),
                "name": p.name,
                "nhi_card_no": p.nhi_card_no,
                "household_no": pop.household_of(p).map(|h| h.number.clone()),
                "id_card_issued": p.id_card_issued.map(|d| d.iso()),
            })
        })
        .collect();
    let path = dir.join("people.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&serde_json::json!({ "people": people }))?,
    )
    .with_context(|| format!("cannot write {}", path.display()))
}

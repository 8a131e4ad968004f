//! `mydata counter ...`: registers the offices, counters and clerk accounts of counter
//! verification in the platform's database (run by the operator for an agency).

use crate::ConfigArgs;
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use mydata_core::SystemClock;
use mydata_server::Server;
use mydata_server::counter::clerk::{self, Role};
use std::io::BufRead;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum CounterCommand {
    /// Register an office of an agency (or update its names and services). Its counter services
    /// must be catalogue services of mode `counter` or `both`.
    AddOffice(AddOffice),
    /// Register a counter (a desk with a scanner) of an office, or rename it.
    AddCounter(AddCounter),
    /// Create a clerk account of an office. The password is read from the environment variable
    /// MYDATA_CLERK_PASSWORD or, without it, from the first line of standard input. Prints the
    /// TOTP secret for the clerk's authenticator app once; it is stored only sealed.
    AddClerk(AddClerk),
    /// List the registered offices and their counters.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct AddOffice {
    #[command(flatten)]
    config: ConfigArgs,
    /// Office ID (letters, digits, '-', '_', '.').
    #[arg(long)]
    id: String,
    /// The agency the office belongs to (an ID of your choice, e.g. hualien-county).
    #[arg(long)]
    agency: String,
    /// Name in Traditional Chinese.
    #[arg(long)]
    name_zh: String,
    /// Name in English.
    #[arg(long)]
    name_en: String,
    /// A counter service the office does (repeat for several).
    #[arg(long = "service", required = true)]
    services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AddCounter {
    #[command(flatten)]
    config: ConfigArgs,
    /// The office the counter belongs to.
    #[arg(long)]
    office: String,
    /// Counter ID (unique across the platform).
    #[arg(long)]
    id: String,
    /// Name shown to clerks and in the password message, e.g. "3 號櫃檯".
    #[arg(long, default_value = "")]
    name: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Clerk,
    Supervisor,
}

#[derive(Debug, Args)]
pub struct AddClerk {
    #[command(flatten)]
    config: ConfigArgs,
    /// The clerk's office.
    #[arg(long)]
    office: String,
    /// Sign-in name.
    #[arg(long)]
    username: String,
    /// Name shown on the counter page.
    #[arg(long, default_value = "")]
    name: String,
    /// Role: a supervisor also sees every counter of the office and its lockout.
    #[arg(long, value_enum, default_value = "clerk")]
    role: RoleArg,
    /// The clerk's ID number, so they may also sign in with their citizen certificate (level 1).
    /// Stored only as the platform's keyed pseudonym.
    #[arg(long, value_name = "ID_NUMBER")]
    certificate_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

async fn server(config: &ConfigArgs) -> anyhow::Result<Server> {
    // The platform's state without serving: an unused loopback port.
    let settings = config.existing(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))))?;
    Server::bind(settings, Arc::new(SystemClock)).await
}

pub async fn run(cmd: CounterCommand) -> anyhow::Result<()> {
    match cmd {
        CounterCommand::AddOffice(a) => {
            let s = server(&a.config).await?;
            let o = clerk::register_office(
                s.state(),
                &a.id,
                &a.agency,
                &a.name_zh,
                &a.name_en,
                &a.services,
            )
            .await?;
            println!(
                "office {} ({}) registered for {}",
                o.id,
                o.agency,
                a.services.join(", ")
            );
        }
        CounterCommand::AddCounter(a) => {
            let s = server(&a.config).await?;
            let c = clerk::register_counter(s.state(), &a.office, &a.id, &a.name).await?;
            println!(
                "counter {} ({}) registered at office {}",
                c.id, c.name, c.office_id
            );
        }
        CounterCommand::AddClerk(a) => {
            let password = match std::env::var("MYDATA_CLERK_PASSWORD") {
                Ok(p) if !p.is_empty() => p,
                _ => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("cannot read the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let role = match a.role {
                RoleArg::Clerk => Role::Clerk,
                RoleArg::Supervisor => Role::Supervisor,
            };
            let s = server(&a.config).await?;
            let c = clerk::register_clerk(
                s.state(),
                &a.office,
                &a.username,
                &a.name,
                role,
                &password,
                a.certificate_id.as_deref(),
            )
            .await?;
            println!(
                "clerk {} ({}) created at office {}",
                c.clerk.username, c.clerk.role, c.clerk.office_id
            );
            println!("TOTP secret (shown once): {}", c.totp_secret);
            println!("TOTP URI: {}", c.totp_uri);
        }
        CounterCommand::List(a) => {
            let s = server(&a.config).await?;
            let store = s.state().store();
            for o in store.offices().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    o.id,
                    o.agency,
                    o.name_zh,
                    o.service_ids().join(",")
                );
                for c in store.counters_of_office(&o.id).await? {
                    println!("  {}\t{}", c.id, c.name);
                }
            }
        }
    }
    Ok(())
}

/// The demo's counter: one office doing every counter service of the catalogue, one counter and
/// one clerk (created once; their TOTP secret is printed when the clerk is created).
pub async fn demo_desk(state: &mydata_server::state::AppState) -> anyhow::Result<()> {
    use mydata_core::catalog::ServiceMode;
    let services: Vec<String> = state
        .catalog()
        .services()
        .iter()
        .filter(|s| s.mode.offers(ServiceMode::Counter))
        .map(|s| s.id.clone())
        .collect();
    clerk::register_office(
        state,
        "demo-office",
        "demo-county",
        "示範縣政府服務櫃檯",
        "Demo county service desk",
        &services,
    )
    .await?;
    clerk::register_counter(state, "demo-office", "demo-counter-1", "1 號櫃檯").await?;
    if state
        .store()
        .clerk_by_username("demo-clerk")
        .await?
        .is_none()
    {
        let c = clerk::register_clerk(
            state,
            "demo-office",
            "demo-clerk",
            "示範承辦人",
            Role::Supervisor,
            "demo-clerk-password",
            None,
        )
        .await?;
        eprintln!(
            "counter verification: clerk `demo-clerk`, password `demo-clerk-password`, TOTP secret {} \
             (add it to an authenticator app: {}); sign in at /clerk/login",
            c.totp_secret, c.totp_uri
        );
    } else {
        eprintln!(
            "counter verification: clerk `demo-clerk` (password `demo-clerk-password`, TOTP secret printed when first created); sign in at /clerk/login"
        );
    }
    Ok(())
}

//! Test cards for the synthetic population, written by `mydata demo` under
//! `<data-dir>/demo/cards/`:
//!
//! ```text
//! cards/<serialNumber>.p12, .pem   one valid card per synthetic person and company (PIN 123456)
//! cards/negative/<serialNumber>-revoked.p12, -expired.p12   cards the platform must refuse
//! cards/ca/root.pem                the identity trust anchor (simulated GRCA)
//! cards/ca/{root,moica,moeaca}.crl.pem   CRLs, re-signed at every start (valid 7 days)
//! cards/ca/{moica,moeaca}.pem      the issuing CAs (also inside every card's chain)
//! cards/index.json                 every card: file, kind, subject, serialNumber, status
//! ```
//!
//! Cards and CA keys are made once and kept; later starts only refresh the CRLs, so a card a
//! person loaded into `mydata card-agent` stays valid across demo restarts.

use crate::ca::{CaError, CardKind, IdentityPki, Subject, pem};
use crate::card::{CardError, DEMO_PIN, to_pkcs12};
use mydata_core::Timestamp;
use mydata_provider_sim::population::Population;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const DAY_MS: i64 = 86_400_000;
/// How long a CRL published at start-up stays current.
const CRL_DAYS: i64 = 7;
/// Validity of a demo card (a MOICA card is valid for years; tests move the clock, not this).
const CARD_YEARS: i64 = 5;

/// Why demo cards could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Card(#[from] CardError),
    #[error("file error at {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is damaged; delete the folder to have the cards made again: {1}")]
    Index(PathBuf, String),
}

/// A card's standing, for negative tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardStatus {
    Valid,
    /// Listed in its CA's CRL.
    Revoked,
    /// Past its notAfter.
    Expired,
}

/// One card to make.
#[derive(Debug, Clone)]
pub struct CardSpec {
    pub subject: Subject,
    pub status: CardStatus,
}

/// One entry of `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexedCard {
    /// PKCS#12 file, relative to the cards folder.
    pub file: String,
    /// Public certificate chain (PEM), relative to the cards folder.
    pub chain: String,
    pub kind: CardKind,
    pub subject: String,
    pub serial_number: String,
    pub cert_serial: u64,
    pub status: CardStatus,
}

/// `index.json`: what is in the cards folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    pub pin: String,
    /// The identity root to configure as trust anchor.
    pub trust_anchor: String,
    /// CRLs of the root and both issuing CAs.
    pub crls: Vec<String>,
    /// Next certificate serial of each issuing CA (so a restored CA never repeats one).
    pub next_serial: [u64; 3],
    pub cards: Vec<IndexedCard>,
}

/// Where `mydata demo` keeps its cards.
pub fn cards_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("demo").join("cards")
}

/// The cards for a population: every person and company a valid card; person 1 and company 1
/// also a revoked one, person 2 an expired one.
pub fn population_specs(population: &Population) -> Vec<CardSpec> {
    let mut specs: Vec<CardSpec> = Vec::new();
    for p in population.persons() {
        specs.push(CardSpec {
            subject: Subject {
                kind: CardKind::Citizen,
                name: p.name.clone(),
                serial_number: p.id.as_str().to_owned(),
            },
            status: CardStatus::Valid,
        });
    }
    for c in population.companies() {
        specs.push(CardSpec {
            subject: Subject {
                kind: CardKind::Business,
                name: c.name.clone(),
                serial_number: c.ban.as_str().to_owned(),
            },
            status: CardStatus::Valid,
        });
    }
    let mut extra = |subject: Option<Subject>, status| {
        if let Some(subject) = subject {
            specs.push(CardSpec { subject, status });
        }
    };
    let person = |i: usize| {
        population.person(i).map(|p| Subject {
            kind: CardKind::Citizen,
            name: p.name.clone(),
            serial_number: p.id.as_str().to_owned(),
        })
    };
    extra(person(1), CardStatus::Revoked);
    extra(person(2), CardStatus::Expired);
    extra(
        population.company(1).map(|c| Subject {
            kind: CardKind::Business,
            name: c.name.clone(),
            serial_number: c.ban.as_str().to_owned(),
        }),
        CardStatus::Revoked,
    );
    specs
}

/// What [`ensure_cards`] did.
#[derive(Debug, Clone)]
pub struct CardsReport {
    pub dir: PathBuf,
    pub cards: usize,
    /// False when existing cards were kept and only the CRLs refreshed.
    pub created: bool,
}

/// Makes the cards of `specs` under `dir` unless they exist; in every case re-signs the CRLs
/// (valid from an hour before `now` for 7 days).
pub fn ensure_cards(
    dir: &Path,
    specs: &[CardSpec],
    now: Timestamp,
) -> Result<CardsReport, DemoError> {
    let index_path = dir.join("index.json");
    if index_path.is_file() {
        let index = read_index(&index_path)?;
        let pki = restore_pki(dir, &index)?;
        write_crls(dir, &pki, &index, now)?;
        return Ok(CardsReport {
            dir: dir.to_owned(),
            cards: index.cards.len(),
            created: false,
        });
    }
    let pki = IdentityPki::generate(now)?;
    let ca_dir = dir.join("ca");
    mkdir(&ca_dir)?;
    mkdir(&dir.join("negative"))?;
    write(&ca_dir.join("root.pem"), pki.root.cert_pem().as_bytes())?;
    write_private(&ca_dir.join("root.key.pem"), pki.root.key_pem().as_bytes())?;
    for kind in [CardKind::Citizen, CardKind::Business] {
        let ca = pki.issuer(kind);
        let stem = kind.ca_file_stem();
        write(
            &ca_dir.join(format!("{stem}.pem")),
            ca.cert_pem().as_bytes(),
        )?;
        write_private(
            &ca_dir.join(format!("{stem}.key.pem")),
            ca.key_pem().as_bytes(),
        )?;
    }

    let nb = Timestamp::from_millis(now.millis() - DAY_MS);
    let valid_until = Timestamp::from_millis(now.millis() + CARD_YEARS * 365 * DAY_MS);
    let mut cards = Vec::with_capacity(specs.len());
    for spec in specs {
        let (not_before, not_after) = match spec.status {
            CardStatus::Expired => (
                Timestamp::from_millis(now.millis() - 3 * 365 * DAY_MS),
                Timestamp::from_millis(now.millis() - 30 * DAY_MS),
            ),
            _ => (nb, valid_until),
        };
        let issued = pki.issue(&spec.subject, not_before, not_after)?;
        let chain = vec![
            issued.der.clone(),
            pki.issuer(spec.subject.kind).cert_der().to_vec(),
        ];
        let stem = match spec.status {
            CardStatus::Valid => spec.subject.serial_number.clone(),
            CardStatus::Revoked => format!("negative/{}-revoked", spec.subject.serial_number),
            CardStatus::Expired => format!("negative/{}-expired", spec.subject.serial_number),
        };
        let p12 = to_pkcs12(&issued.key_pkcs8, &chain, DEMO_PIN)?;
        write_private(&dir.join(format!("{stem}.p12")), &p12)?;
        let chain_pem: String = chain.iter().map(|d| pem("CERTIFICATE", d)).collect();
        write(&dir.join(format!("{stem}.pem")), chain_pem.as_bytes())?;
        cards.push(IndexedCard {
            file: format!("{stem}.p12"),
            chain: format!("{stem}.pem"),
            kind: spec.subject.kind,
            subject: spec.subject.name.clone(),
            serial_number: spec.subject.serial_number.clone(),
            cert_serial: issued.serial,
            status: spec.status,
        });
    }
    let index = Index {
        pin: DEMO_PIN.to_owned(),
        trust_anchor: "ca/root.pem".to_owned(),
        crls: vec![
            "ca/root.crl.pem".to_owned(),
            "ca/moica.crl.pem".to_owned(),
            "ca/moeaca.crl.pem".to_owned(),
        ],
        next_serial: [
            pki.root.peek_serial(),
            pki.citizen.peek_serial(),
            pki.business.peek_serial(),
        ],
        cards,
    };
    write_crls(dir, &pki, &index, now)?;
    let json = serde_json::to_vec_pretty(&index)
        .map_err(|e| DemoError::Index(index_path.clone(), e.to_string()))?;
    write(&dir.join("README.txt"), README.as_bytes())?;
    // The index goes last: its presence means the folder is complete.
    write(&index_path, &json)?;
    Ok(CardsReport {
        dir: dir.to_owned(),
        cards: index.cards.len(),
        created: true,
    })
}

const README: &str = "Test cards of the simulated identity CAs (mydata demo).\n\n\
Every card's PIN is 123456. Load one into the local card reader service:\n\n  \
mydata card-agent --card <serialNumber>.p12\n\n\
<serialNumber>.p12 holds the key and certificate chain (PIN-protected); <serialNumber>.pem is the\n\
public chain a reader shows without the PIN. negative/ holds revoked and expired cards the platform\n\
must refuse. ca/root.pem is the identity trust anchor; ca/*.crl.pem are its CRLs. index.json lists\n\
every card. Three wrong PINs lock a card in the agent; only a new card unlocks it.\n";

fn read_index(path: &Path) -> Result<Index, DemoError> {
    let bytes = std::fs::read(path).map_err(|source| DemoError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| DemoError::Index(path.to_owned(), e.to_string()))
}

fn restore_pki(dir: &Path, index: &Index) -> Result<IdentityPki, DemoError> {
    let ca_dir = dir.join("ca");
    let load = |stem: &str, next: u64| -> Result<crate::ca::Authority, DemoError> {
        let cert = crate::card::read_chain_pem(&ca_dir.join(format!("{stem}.pem")))?;
        let key_path = ca_dir.join(format!("{stem}.key.pem"));
        let key = std::fs::read_to_string(&key_path).map_err(|source| DemoError::Io {
            path: key_path,
            source,
        })?;
        let der = cert
            .first()
            .ok_or_else(|| DemoError::Index(ca_dir.clone(), format!("{stem}.pem is empty")))?;
        Ok(crate::ca::Authority::restore(der, &key, next)?)
    };
    Ok(IdentityPki {
        root: load("root", index.next_serial[0])?,
        citizen: load("moica", index.next_serial[1])?,
        business: load("moeaca", index.next_serial[2])?,
    })
}

fn write_crls(
    dir: &Path,
    pki: &IdentityPki,
    index: &Index,
    now: Timestamp,
) -> Result<(), DemoError> {
    let this_update = Timestamp::from_millis(now.millis() - 3_600_000);
    let next_update = Timestamp::from_millis(now.millis() + CRL_DAYS * DAY_MS);
    let revoked = |kind: CardKind| -> Vec<u64> {
        index
            .cards
            .iter()
            .filter(|c| c.kind == kind && c.status == CardStatus::Revoked)
            .map(|c| c.cert_serial)
            .collect()
    };
    let ca_dir = dir.join("ca");
    let root_crl = pki.root.crl(&[], this_update, next_update)?;
    write(
        &ca_dir.join("root.crl.pem"),
        pem("X509 CRL", &root_crl).as_bytes(),
    )?;
    for kind in [CardKind::Citizen, CardKind::Business] {
        let crl = pki
            .issuer(kind)
            .crl(&revoked(kind), this_update, next_update)?;
        write(
            &ca_dir.join(format!("{}.crl.pem", kind.ca_file_stem())),
            pem("X509 CRL", &crl).as_bytes(),
        )?;
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), DemoError> {
    std::fs::create_dir_all(path).map_err(|source| DemoError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    std::fs::write(path, bytes).map_err(|source| DemoError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file only its owner may read (keys, cards).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    let io = |source| DemoError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// Makes (or refreshes) the demo cards for the default synthetic population (the one the
/// simulated agencies serve) under `<data_dir>/demo/cards/`.
pub fn write_demo_cards(data_dir: &Path, now: Timestamp) -> Result<CardsReport, DemoError> {
    // The same seed and reference date the simulated agencies use by default.
    let population = Population::generate(
        mydata_provider_sim::server::DEFAULT_SEED,
        mydata_provider_sim::server::DEFAULT_REFERENCE_DATE,
    );
    ensure_cards(&cards_dir(data_dir), &population_specs(&population), now)
}

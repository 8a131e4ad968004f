//! The public catalogue API: datasets, services, agencies, categories, and what a basket of datasets
//! requires. Read-only and the same for everyone; filters are validated strictly so that a typo in a
//! parameter name or value is an error instead of a silently unfiltered list.

use crate::error::AppError;
use crate::routes::path::Path;
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mydata_core::catalog::{
    DataFormat, Dataset, DatasetFilter, SelectionError, Service, ServiceFilter, ServiceMode,
};
use mydata_core::{AssuranceLevel, Catalog, IdentityMethod};
use serde::{Deserialize, Serialize};

/// Longest free-text query accepted.
const MAX_QUERY_CHARS: usize = 200;
/// Most datasets accepted in one selection request (the whole catalogue is far below this).
const MAX_SELECTION: usize = 200;

#[derive(Debug, Serialize)]
pub struct NamedRef<'a> {
    pub id: &'a str,
    pub name_zh: &'a str,
    pub name_en: &'a str,
}

#[derive(Debug, Serialize)]
pub struct MethodView {
    pub code: &'static str,
    pub level: AssuranceLevel,
    pub name_zh: &'static str,
    pub name_en: &'static str,
}

impl From<IdentityMethod> for MethodView {
    fn from(m: IdentityMethod) -> Self {
        Self {
            code: m.code(),
            level: m.level(),
            name_zh: m.name_zh(),
            name_en: m.name_en(),
        }
    }
}

/// A dataset as the API shows it.
#[derive(Debug, Serialize)]
pub struct DatasetView<'a> {
    pub id: &'a str,
    pub no: u32,
    pub name_zh: &'a str,
    pub name_en: &'a str,
    pub agency: NamedRef<'a>,
    pub category: NamedRef<'a>,
    pub identity_methods: Vec<MethodView>,
    /// The weakest assurance level the agency accepts (1 strongest .. 4 weakest).
    pub min_level: AssuranceLevel,
    pub formats: &'a [DataFormat],
    pub ready_minutes: u32,
}

fn named<'a>(id: &'a str, label: Option<&'a mydata_core::catalog::Label>) -> NamedRef<'a> {
    NamedRef {
        id,
        name_zh: label.map_or("", |l| l.name_zh.as_str()),
        name_en: label.map_or("", |l| l.name_en.as_str()),
    }
}

pub fn dataset_view<'a>(c: &'a Catalog, d: &'a Dataset) -> DatasetView<'a> {
    DatasetView {
        id: &d.id,
        no: d.no,
        name_zh: &d.name_zh,
        name_en: &d.name_en,
        agency: named(&d.agency, c.agency(&d.agency)),
        category: named(&d.category, c.category(&d.category)),
        identity_methods: d
            .identity_methods
            .iter()
            .copied()
            .map(MethodView::from)
            .collect(),
        min_level: d.min_level(),
        formats: &d.formats,
        ready_minutes: d.ready_minutes,
    }
}

/// A service as the API shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView<'a> {
    pub id: &'a str,
    pub name_zh: &'a str,
    pub name_en: &'a str,
    pub provider_zh: &'a str,
    pub provider_en: &'a str,
    pub mode: ServiceMode,
    pub sector: NamedRef<'a>,
    pub datasets: Vec<NamedRef<'a>>,
    pub legal_basis: Option<&'a str>,
}

fn service_view<'a>(c: &'a Catalog, s: &'a Service) -> ServiceView<'a> {
    ServiceView {
        id: &s.id,
        name_zh: &s.name_zh,
        name_en: &s.name_en,
        provider_zh: &s.provider_zh,
        provider_en: &s.provider_en,
        mode: s.mode,
        sector: named(&s.sector, c.sector(&s.sector)),
        datasets: s
            .datasets
            .iter()
            .map(|id| {
                let d = c.dataset(id);
                NamedRef {
                    id,
                    name_zh: d.map_or("", |d| d.name_zh.as_str()),
                    name_en: d.map_or("", |d| d.name_en.as_str()),
                }
            })
            .collect(),
        legal_basis: s.legal_basis.as_deref(),
    }
}

#[derive(Debug, Serialize)]
pub struct DatasetList<'a> {
    pub count: usize,
    pub datasets: Vec<DatasetView<'a>>,
}

/// Filters of `GET /api/v1/datasets`; unknown parameters are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetQuery {
    pub agency: Option<String>,
    pub category: Option<String>,
    pub identity_method: Option<String>,
    pub format: Option<String>,
    pub q: Option<String>,
}

fn invalid(name: &str, message: String) -> AppError {
    AppError::InvalidParameter {
        name: name.to_owned(),
        message,
    }
}

/// Parses a filter value; its error repeats the value clipped (the catalogue's words echo it whole).
fn parsed<T: std::str::FromStr<Err = String>>(name: &str, raw: &str) -> Result<T, AppError> {
    raw.parse::<T>()
        .map_err(|e| invalid(name, e.replace(raw, &super::clip(raw))))
}

impl DatasetQuery {
    /// Checks every value against the catalogue and builds the core filter.
    pub fn to_filter(&self, c: &Catalog) -> Result<DatasetFilter, AppError> {
        let nonempty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let agency = nonempty(&self.agency);
        if let Some(a) = &agency
            && c.agency(a).is_none()
        {
            return Err(invalid(
                "agency",
                format!(
                    "unknown agency `{}`; the list is at /api/v1/agencies",
                    super::clip(a)
                ),
            ));
        }
        let category = nonempty(&self.category);
        if let Some(x) = &category
            && c.category(x).is_none()
        {
            let ids: Vec<&str> = c.categories().iter().map(|c| c.id.as_str()).collect();
            return Err(invalid(
                "category",
                format!(
                    "unknown category `{}` (allowed: {})",
                    super::clip(x),
                    ids.join(", ")
                ),
            ));
        }
        let identity_method = nonempty(&self.identity_method)
            .map(|m| parsed::<IdentityMethod>("identity_method", &m))
            .transpose()?;
        let format = nonempty(&self.format)
            .map(|f| parsed::<DataFormat>("format", &f))
            .transpose()?;
        let query = nonempty(&self.q);
        if query
            .as_ref()
            .is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS)
        {
            return Err(invalid(
                "q",
                format!("is longer than {MAX_QUERY_CHARS} characters"),
            ));
        }
        Ok(DatasetFilter {
            agency,
            category,
            identity_method,
            format,
            query,
        })
    }
}

/// Serialises borrowed views straight to the response body (no intermediate JSON tree).
fn json_response<T: Serialize>(value: &T) -> Result<Response, AppError> {
    let body = serde_json::to_vec(value).map_err(|e| AppError::Internal(e.into()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /api/v1/datasets`
pub async fn list_datasets(
    State(state): State<AppState>,
    query: Result<Query<DatasetQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = query?;
    let c = state.catalog();
    let filter = q.to_filter(c)?;
    let datasets: Vec<DatasetView<'_>> = c
        .find_datasets(&filter)
        .into_iter()
        .map(|d| dataset_view(c, d))
        .collect();
    json_response(&DatasetList {
        count: datasets.len(),
        datasets,
    })
}

/// One dataset with the services that use it.
#[derive(Debug, Serialize)]
struct DatasetDetail<'a> {
    #[serde(flatten)]
    dataset: DatasetView<'a>,
    used_by_services: Vec<NamedRef<'a>>,
}

/// `GET /api/v1/datasets/{id}`: the dataset and the services that use it.
pub async fn get_dataset(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = state.catalog();
    let d = c
        .dataset(&id)
        .ok_or_else(|| super::not_found("dataset", &id))?;
    let used_by_services: Vec<NamedRef<'_>> = c
        .services()
        .iter()
        .filter(|s| s.datasets.iter().any(|x| x == &d.id))
        .map(|s| NamedRef {
            id: &s.id,
            name_zh: &s.name_zh,
            name_en: &s.name_en,
        })
        .collect();
    json_response(&DatasetDetail {
        dataset: dataset_view(c, d),
        used_by_services,
    })
}

#[derive(Debug, Serialize)]
struct ServiceList<'a> {
    count: usize,
    services: Vec<ServiceView<'a>>,
}

/// Filters of `GET /api/v1/services`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceQuery {
    /// `online` or `counter` (services offered both ways match either), or `both`.
    pub mode: Option<String>,
    pub sector: Option<String>,
}

/// `GET /api/v1/services`
pub async fn list_services(
    State(state): State<AppState>,
    query: Result<Query<ServiceQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = query?;
    let c = state.catalog();
    let mode = q
        .mode
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|m| parsed::<ServiceMode>("mode", m))
        .transpose()?;
    let sector = q.sector.filter(|s| !s.is_empty());
    if let Some(s) = &sector
        && c.sector(s).is_none()
    {
        let ids: Vec<&str> = c.sectors().iter().map(|s| s.id.as_str()).collect();
        return Err(invalid(
            "sector",
            format!(
                "unknown sector `{}` (allowed: {})",
                super::clip(s),
                ids.join(", ")
            ),
        ));
    }
    let services: Vec<ServiceView<'_>> = c
        .find_services(&ServiceFilter { mode, sector })
        .into_iter()
        .map(|s| service_view(c, s))
        .collect();
    json_response(&ServiceList {
        count: services.len(),
        services,
    })
}

/// `GET /api/v1/services/{id}`
pub async fn get_service(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let c = state.catalog();
    let s = c
        .service(&id)
        .ok_or_else(|| super::not_found("service", &id))?;
    json_response(&service_view(c, s))
}

#[derive(Debug, Serialize)]
struct LabelCount<'a> {
    id: &'a str,
    name_zh: &'a str,
    name_en: &'a str,
    dataset_count: usize,
}

/// Labels with the number of datasets each one has.
fn counted<'a>(
    c: &'a Catalog,
    labels: &'a [mydata_core::catalog::Label],
    of: impl Fn(&Dataset) -> &str,
) -> Vec<LabelCount<'a>> {
    labels
        .iter()
        .map(|l| LabelCount {
            id: &l.id,
            name_zh: &l.name_zh,
            name_en: &l.name_en,
            dataset_count: c.datasets().iter().filter(|d| of(d) == l.id).count(),
        })
        .collect()
}

/// `GET /api/v1/agencies`
pub async fn list_agencies(State(state): State<AppState>) -> Json<serde_json::Value> {
    let c = state.catalog();
    let agencies = counted(c, c.agencies(), |d| &d.agency);
    Json(serde_json::json!({ "count": agencies.len(), "agencies": agencies }))
}

/// `GET /api/v1/categories`
pub async fn list_categories(State(state): State<AppState>) -> Json<serde_json::Value> {
    let c = state.catalog();
    let categories = counted(c, c.categories(), |d| &d.category);
    Json(serde_json::json!({ "count": categories.len(), "categories": categories }))
}

/// Body of `POST /api/v1/selection`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionRequest {
    pub datasets: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ExclusionView {
    method: MethodView,
    excluded_by: Vec<String>,
}

/// `POST /api/v1/selection`: which identity methods a basket of datasets allows, which datasets rule
/// out the others, the level to reach and the expected wait. Used by the pages before identity.
pub async fn selection(
    State(state): State<AppState>,
    body: Result<Json<SelectionRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, AppError> {
    let Json(req) = body?;
    if req.datasets.len() > MAX_SELECTION {
        return Err(AppError::InvalidBody(format!(
            "at most {MAX_SELECTION} datasets may be chosen at once"
        )));
    }
    let s = state
        .catalog()
        .selection(&req.datasets)
        .map_err(|e| match e {
            SelectionError::Empty => AppError::EmptySelection,
            SelectionError::UnknownDataset(id) => super::not_found("dataset", &id),
        })?;
    let excluded: Vec<ExclusionView> = s
        .excluded_methods
        .iter()
        .map(|e| ExclusionView {
            method: e.method.into(),
            excluded_by: e.excluded_by.clone(),
        })
        .collect();
    Ok(Json(serde_json::json!({
        "datasets": s.datasets,
        "identity_methods": s.identity_methods.iter().copied().map(MethodView::from).collect::<Vec<_>>(),
        "excluded_methods": excluded,
        "required_level": s.required_level,
        "ready_minutes": s.ready_minutes,
    })))
}

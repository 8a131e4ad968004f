//! The citizen home page: every dataset, grouped by agency or category, with search and filters.

use crate::error::{AppError, PageError, render};
use crate::i18n::Lang;
use crate::pages::{DatasetCard, Group, HomePage, SelectOption};
use crate::routes::catalog_api::DatasetQuery;
use crate::state::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::HeaderMap;
use axum::response::{IntoResponse, Response};
use mydata_core::catalog::Dataset;
use serde::Deserialize;

/// Query of the home page. Unknown parameters are refused like on the API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeQuery {
    pub lang: Option<String>,
    /// `agency` (default) or `category`.
    pub group: Option<String>,
    pub q: Option<String>,
    pub agency: Option<String>,
    pub category: Option<String>,
    pub identity_method: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grouping {
    Agency,
    Category,
}

/// `GET /`
pub async fn home(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HomeQuery>, QueryRejection>,
) -> Response {
    let from_query = query
        .as_ref()
        .ok()
        .and_then(|Query(q)| q.lang.as_deref().and_then(Lang::parse));
    let lang = from_query
        .or_else(|| Lang::from_cookie(&headers))
        .unwrap_or_default();
    match build(&state, query, lang) {
        Ok(page) => page.into_response(),
        Err(e) => PageError(e, lang).into_response(),
    }
}

fn build(
    state: &AppState,
    query: Result<Query<HomeQuery>, QueryRejection>,
    lang: Lang,
) -> Result<impl IntoResponse, AppError> {
    let Query(q) = query?;
    if let Some(l) = q.lang.as_deref().filter(|l| Lang::parse(l).is_none()) {
        return Err(AppError::InvalidParameter {
            name: "lang".into(),
            message: format!("unknown language `{}` (allowed: zh-TW, en)", super::clip(l)),
        });
    }
    let grouping = match q.group.as_deref().unwrap_or("agency") {
        "agency" | "" => Grouping::Agency,
        "category" => Grouping::Category,
        other => {
            return Err(AppError::InvalidParameter {
                name: "group".into(),
                message: format!(
                    "unknown grouping `{}` (allowed: agency, category)",
                    super::clip(other)
                ),
            });
        }
    };
    let c = state.catalog();
    let dq = DatasetQuery {
        agency: q.agency.clone(),
        category: q.category.clone(),
        identity_method: q.identity_method.clone(),
        format: q.format.clone(),
        q: q.q.clone(),
    };
    let filter = dq.to_filter(c)?;
    let found = c.find_datasets(&filter);

    // One group per agency or category, in catalogue order, leaving out empty ones.
    let group_by =
        |labels: &[mydata_core::catalog::Label], of: &dyn Fn(&Dataset) -> &str| -> Vec<Group> {
            labels
                .iter()
                .map(|l| {
                    let cards = found
                        .iter()
                        .filter(|d| of(d) == l.id)
                        .map(|d| DatasetCard::new(c, d, lang))
                        .collect();
                    Group::new(&l.id, lang.pick(&l.name_zh, &l.name_en), cards)
                })
                .filter(|g| !g.datasets.is_empty())
                .collect()
        };
    let groups = match grouping {
        Grouping::Agency => group_by(c.agencies(), &|d| &d.agency),
        Grouping::Category => group_by(c.categories(), &|d| &d.category),
    };
    let category_options = c
        .categories()
        .iter()
        .map(|x| {
            SelectOption::new(
                &x.id,
                lang.pick(&x.name_zh, &x.name_en),
                filter.category.as_deref() == Some(x.id.as_str()),
            )
        })
        .collect();
    let agency_options = c
        .agencies()
        .iter()
        .map(|x| {
            SelectOption::new(
                &x.id,
                lang.pick(&x.name_zh, &x.name_en),
                filter.agency.as_deref() == Some(x.id.as_str()),
            )
        })
        .collect();
    let page = HomePage::new(
        lang,
        groups,
        found.len(),
        c.datasets().len(),
        filter.query.unwrap_or_default(),
        grouping == Grouping::Category,
        category_options,
        agency_options,
    );
    render(&page)
}

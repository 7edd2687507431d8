//! What every backend reports about itself, whatever role it serves.

/// Health of one backend, as `/ready` reports it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct BackendHealth {
    pub backend: &'static str,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

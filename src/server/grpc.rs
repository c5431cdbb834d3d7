//! The gRPC listener: Envoy ext_authz, Portcullis' own decision and decisions API, health
//! (`grpc.health.v1`) and server reflection (v1 and v1alpha, for grpcurl).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use super::AppState;
use super::convert::decision_to_pb;
use super::ext_authz::ExtAuthz;
use crate::decision::{DecisionRequest, Outcome, TraceLink};
use crate::proto;
use crate::proto::decision_service_server::{DecisionService, DecisionServiceServer};
use crate::proto::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use crate::trace::{DEFAULT_LIST_LIMIT, DecisionFilter, MAX_LIST_LIMIT};

struct Decisions {
    state: Arc<AppState>,
}

impl Decisions {
    /// Recent decisions and the loaded services are for operators (see `super::admin`).
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.state
            .admin_grpc
            .check(authorization)
            .map_err(|denial| match denial {
                super::admin::AdminDenial::BadToken => Status::unauthenticated(denial.message()),
                super::admin::AdminDenial::NotConfigured => {
                    Status::permission_denied(denial.message())
                }
            })
    }
}

fn filter_of(request: &proto::ListDecisionsRequest) -> Result<DecisionFilter, Status> {
    let outcome = match request.outcome.as_str() {
        "" => None,
        text => Some(Outcome::parse(text).ok_or_else(|| {
            Status::invalid_argument(format!("outcome `{text}` is neither `allow` nor `deny`"))
        })?),
    };
    let status = match request.status {
        0 => None,
        s => Some(
            u16::try_from(s)
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| {
                    Status::invalid_argument(format!("status {s} is not an HTTP status"))
                })?,
        ),
    };
    let since_millis = request
        .since
        .as_ref()
        .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000));
    let trace_id = match request.trace_id.as_str() {
        "" => None,
        text => Some(TraceLink::parse_trace_id(text).ok_or_else(|| {
            Status::invalid_argument(format!(
                "trace_id `{text}` is not a W3C trace id (32 hex digits, not all zero)"
            ))
        })?),
    };
    Ok(DecisionFilter {
        service: Some(request.service.clone()).filter(|s| !s.is_empty()),
        outcome,
        status,
        subject: Some(request.subject.clone()).filter(|s| !s.is_empty()),
        since_millis,
        until_millis: request
            .until
            .as_ref()
            .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000)),
        shadow_differs: request.shadow_differs,
        text: None,
        trace_id,
    })
}

#[tonic::async_trait]
impl DecisionService for Decisions {
    async fn decide(
        &self,
        request: Request<proto::DecideRequest>,
    ) -> Result<Response<proto::Decision>, Status> {
        let metadata = super::otel::metadata_context(request.metadata());
        let r = request.get_ref();
        let headers: Vec<(&str, &str)> = r
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        let decision = self
            .state
            .decide_traced(
                &DecisionRequest {
                    method: &r.method,
                    url: &r.url,
                    headers: &headers,
                    client: super::parse_client(&r.client_address),
                    client_cert: Some(r.client_certificate.as_str()).filter(|c| !c.is_empty()),
                },
                "grpc",
                &metadata,
            )
            .await;
        Ok(Response::new(decision_to_pb(&decision)))
    }

    async fn list_decisions(
        &self,
        request: Request<proto::ListDecisionsRequest>,
    ) -> Result<Response<proto::ListDecisionsResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        let filter = filter_of(&r)?;
        let limit = match r.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => (n as usize).min(MAX_LIST_LIMIT),
        };
        let decisions = self
            .state
            .list_decisions(&filter, limit)
            .await
            .decisions
            .iter()
            .map(|d| decision_to_pb(&d.decision()))
            .collect();
        Ok(Response::new(proto::ListDecisionsResponse { decisions }))
    }

    async fn get_decision(
        &self,
        request: Request<proto::GetDecisionRequest>,
    ) -> Result<Response<proto::Decision>, Status> {
        self.admin(&request)?;
        let id = request.into_inner().id;
        match self.state.get_decision(&id).await {
            Some(d) => Ok(Response::new(decision_to_pb(&d.decision()))),
            None => Err(Status::not_found(format!(
                "no decision `{id}` in the recent-decisions store (unknown, or evicted)"
            ))),
        }
    }

    async fn list_services(
        &self,
        request: Request<proto::ListServicesRequest>,
    ) -> Result<Response<proto::ListServicesResponse>, Status> {
        self.admin(&request)?;
        let policies = self.state.policies();
        let services = policies
            .services
            .iter()
            .map(|s| proto::ServiceInfo {
                name: s.name.to_string(),
                description: s.description.clone().unwrap_or_default(),
                base_urls: s.base_urls.clone(),
                operations: s.operations.iter().map(|o| o.name.to_string()).collect(),
                source: s.source.to_string(),
            })
            .collect();
        Ok(Response::new(proto::ListServicesResponse {
            policy_revision: policies.revision().to_string(),
            services,
            last_error: self
                .state
                .reload_status()
                .failure
                .map(|f| {
                    format!(
                        "revision {} does not compile:\n{}",
                        f.revision,
                        f.errors.join("\n")
                    )
                })
                .unwrap_or_default(),
        }))
    }
}

pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    transport: Arc<super::transport::Transport>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until policies and remote key sets are loaded (or the key wait timed out).
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<AuthorizationServer<ExtAuthz>>()
        .await;
    health
        .set_not_serving::<DecisionServiceServer<Decisions>>()
        .await;
    // SERVING while ready; NOT_SERVING again once shutting down.
    let mut ready = state.ready.subscribe();
    let readiness = tokio::spawn(async move {
        for (wanted, status) in [
            (true, tonic_health::ServingStatus::Serving),
            (false, tonic_health::ServingStatus::NotServing),
        ] {
            if ready.wait_for(|r| *r == wanted).await.is_err() {
                return;
            }
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <AuthorizationServer<ExtAuthz> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            health
                .set_service_status(
                    <DecisionServiceServer<Decisions> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
        }
    });
    let _abort_readiness = super::AbortOnDrop(readiness);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let max = transport.config.max_grpc_message;
    let metrics = state.metrics.clone();
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AuthorizationServer::new(ExtAuthz {
                state: state.clone(),
            })
            .max_decoding_message_size(max),
        )
        .add_service(
            DecisionServiceServer::new(Decisions { state }).max_decoding_message_size(max),
        );
    super::transport::serve_grpc(listener, routes, transport, metrics, shutdown).await
}

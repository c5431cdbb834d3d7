//! Portcullis: a policy decision point for API access management.
//!
//! Policy files are compiled into an immutable [`PolicySet`]; an [`Engine`] decides on each
//! request against a policy set and a clock, and returns a [`Decision`] with the status,
//! headers and error body for the gateway and a trace of every check. The engine does no
//! I/O; loading files and serving requests wrap it.
//!
//! ```no_run
//! use portcullis::{DecisionRequest, Engine, PolicyOptions, load_dir};
//!
//! let policies = load_dir("policies".as_ref(), &PolicyOptions::default()).unwrap();
//! let engine = Engine::default();
//! let decision = engine.decide(
//!     &policies,
//!     &DecisionRequest {
//!         method: "GET",
//!         url: "https://localhost:8443/meme-game/api/v1/users/user.0/answers",
//!         headers: &[("authorization", "Bearer eyJ…")],
//!         client: None,
//!         client_cert: None,
//!     },
//!     std::time::SystemTime::now(),
//! );
//! println!("{} {}", decision.status, decision.audit);
//! ```

pub mod decision;
pub mod policy;
pub mod ratelimit;
pub mod route;
pub mod rule;
pub mod server;
pub mod suite;
pub mod time;
pub mod token;
pub mod trace;
pub mod trace_entry;

pub mod proto {
    //! Generated gRPC code: Portcullis' own API (`proto/portcullis/v1`) and the subset of
    //! Envoy's ext_authz v3 API it serves (`proto/envoy`), with the descriptor set that server
    //! reflection publishes.

    tonic::include_proto!("portcullis.v1");

    /// Descriptors of every file under `proto/`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("portcullis_descriptor");

    pub mod envoy {
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }

    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

pub use decision::{Decision, DecisionRequest, Engine, ErrorBody, Outcome, TraceEntry};
pub use policy::{
    PolicyError, PolicyErrors, PolicyOptions, PolicySet, SourceFile, compile, load_dir,
};
pub use route::url::parse_request_url;

//! The standard gRPC services served beside `JobService`, so generic clients
//! (grpcurl, grpc_health_probe, load balancers) work: `grpc.health.v1.Health`
//! and server reflection (`grpc.reflection.v1`, and `v1alpha` for older
//! clients such as Python's grpcio-reflection and older grpcurl), which
//! describes our contract and the health service from their descriptor sets.

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};
use tonic_reflection::server::v1alpha::{
    ServerReflection as ServerReflectionV1Alpha,
    ServerReflectionServer as ServerReflectionServerV1Alpha,
};

use crate::FILE_DESCRIPTOR_SET;
use crate::v1::job_service_server::SERVICE_NAME;

/// The full name of the job service: `jobworker.v1.JobService`.
pub const JOB_SERVICE_NAME: &str = SERVICE_NAME;

/// The reflection service, describing `jobworker.v1` and `grpc.health.v1`.
pub fn reflection()
-> Result<ServerReflectionServer<impl ServerReflection>, tonic_reflection::server::Error> {
    reflection_builder().build_v1()
}

/// The same under its pre-release name, `grpc.reflection.v1alpha`.
pub fn reflection_v1alpha() -> Result<
    ServerReflectionServerV1Alpha<impl ServerReflectionV1Alpha>,
    tonic_reflection::server::Error,
> {
    reflection_builder().build_v1alpha()
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The health service, with `jobworker.v1.JobService` (and the server as a
/// whole, the empty service name) reported as `status`. The reporter changes
/// the status later, e.g. to NOT_SERVING when the supervisor is unreachable.
pub async fn health(status: ServingStatus) -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, server) = tonic_health::server::health_reporter();
    reporter.set_service_status(JOB_SERVICE_NAME, status).await;
    reporter.set_service_status("", status).await;
    (reporter, server)
}

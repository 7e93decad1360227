//! `/v1/images`: the guest images of the data directory, and image builds,
//! which broodd runs as heavy jobs (the normal queue, at most
//! `--max-heavy` at once with the other heavy jobs).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use brood_api::{ErrorBody, Image, ImageBuildRequest, ImageList};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::{Common, JsonBody};
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use crate::host::{Host, image};
use crate::tenancy::{Action, Kind};

type D = State<Arc<Host>>;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(list, build)).routes(routes!(show, delete))
}

/// Lists the images of the data directory.
#[utoipa::path(
    get,
    path = "/v1/images",
    tag = "images",
    operation_id = "list_images",
    responses(
        (status = 200, description = "The images, by name, and the image directories that cannot be read", body = ImageList),
        Common
    )
)]
async fn list(State(d): D, caller: Auth) -> ApiResult<Json<ImageList>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(image::list(&d.paths)?))
}

/// Builds an image as a job: the busybox image (`rootfs` busybox, the
/// default), a Debian image with packages, or the service image.
#[utoipa::path(
    post,
    path = "/v1/images",
    tag = "images",
    operation_id = "build_image",
    request_body = ImageBuildRequest,
    params(super::jobs::WaitQuery),
    responses(
        (status = 201, description = "The image, built (or found up to date with its inputs)", body = Image),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "malformed JSON, an unknown field, an invalid name, Debian options with rootfs busybox, rootfs debian without a name, or `size_gib` out of range", body = ErrorBody),
        (status = 409, description = "broodd finds no brood-agent binary to build with, or the build failed (a package missing on the host or in the mirror, a full disk...): the message says which (`conflict`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        JsonBody,
        Common
    )
)]
async fn build(
    State(d): D,
    caller: Auth,
    Query(w): Query<super::jobs::WaitQuery>,
    ApiJson(req): ApiJson<ImageBuildRequest>,
) -> ApiResult<axum::response::Response> {
    caller.check(Action::Configure, Kind::Infra)?;
    let plan = image::plan(&d.paths, req)?;
    let s = crate::job::Submit::named("image.build", &plan.name(), caller.scope());
    crate::job::on_host(&d, caller.actor(), s, w.wait(), move |_, _| async move {
        let built = tokio::task::spawn_blocking(move || image::build(plan))
            .await
            .map_err(|e| ApiError::internal("run the image build", &e))??;
        let body =
            serde_json::to_vec(&built).map_err(|e| ApiError::internal("encode the image", &e))?;
        Ok(crate::job::Done::with(StatusCode::CREATED, body))
    })
    .await
}

/// Shows an image.
#[utoipa::path(
    get,
    path = "/v1/images/{name}",
    tag = "images",
    operation_id = "show_image",
    params(("name" = String, Path, description = "Image name")),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 400, description = "the name is not a valid image name", body = ErrorBody),
        (status = 404, description = "no image has that name (`not_found`)", body = ErrorBody),
        Common
    )
)]
async fn show(State(d): D, caller: Auth, Path(name): Path<String>) -> ApiResult<Json<Image>> {
    caller.check(Action::Read, Kind::Infra)?;
    Ok(Json(image::show(&d.paths, &name)?))
}

/// Deletes an image (not the default one). Partitions made from it keep
/// booting from their own links to its files; a build of it in progress
/// is waited for.
#[utoipa::path(
    delete,
    path = "/v1/images/{name}",
    tag = "images",
    operation_id = "delete_image",
    params(("name" = String, Path, description = "Image name"), super::jobs::WaitQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 202, description = "With `wait=false`: the job, queued (`GET /v1/jobs/{id}`)", body = brood_api::Job),
        (status = 400, description = "the name is not a valid image name, or it is `default` (rebuild it instead)", body = ErrorBody),
        (status = 404, description = "no image has that name (`not_found`)", body = ErrorBody),
        (status = 503, description = "the job was refused: its queue is full (`unavailable`)", body = ErrorBody),
        Common
    )
)]
async fn delete(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(w): Query<super::jobs::WaitQuery>,
) -> ApiResult<axum::response::Response> {
    caller.check(Action::Configure, Kind::Infra)?;
    image::show(&d.paths, &name)?;
    if name == brood_image::DEFAULT_IMAGE {
        return Err(crate::host::HostError::invalid(
            "the default image cannot be deleted (broodd and `brood run` boot it); rebuild it with `brood image build` instead",
        )
        .into());
    }
    let s = crate::job::Submit::named("image.delete", &name, caller.scope());
    crate::job::on_host(&d, caller.actor(), s, w.wait(), move |d, _| async move {
        image::delete(&d.paths, &name)?;
        Ok(crate::job::Done::empty())
    })
    .await
}

//! `PUT /v1/partitions/{name}/boot-disk`: the disk image a partition with a
//! `boot_disk` boots, uploaded as a stream of any size (up to what an image
//! of the boot disk's size can be) and imported by `host::boot_disk`. The
//! bytes land in a scratch file in the partition's disk directory, removed
//! whatever happens; the partition's root disk is replaced only by a
//! complete import.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use brood_api::{self as api, ErrorBody, ErrorCode};
use brood_ledger::RunState;
use futures::StreamExt as _;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Auth;
use super::doc::Common;
use super::error::{ApiError, ApiResult};
use crate::host::{Host, boot_disk, config};
use crate::tenancy::Action;

type D = State<Arc<Host>>;

/// An upload may exceed the disk's size by this much: a qcow2 image holds
/// its metadata (tables, refcounts) beside its data.
const SLACK_BYTES: u64 = 256 << 20;

pub fn routes(r: OpenApiRouter<Arc<Host>>) -> OpenApiRouter<Arc<Host>> {
    r.routes(routes!(import_boot_disk))
}

/// How to read the upload.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// The image's format (never probed): `qcow2` or `raw`. Read after
    /// the partition is found, so an unknown name is a 404 whatever it says.
    #[param(required = true, value_type = api::ImageFormat)]
    format: Option<String>,
}

/// Imports the disk image a stopped partition with a `boot_disk` boots,
/// replacing the one it had.
#[utoipa::path(
    put,
    path = "/v1/partitions/{name}/boot-disk",
    tag = "partitions",
    operation_id = "import_boot_disk",
    params(("name" = String, Path, description = "Partition name or uuid"), ImportQuery),
    request_body(content = String, content_type = "application/octet-stream", description = "The image's bytes"),
    responses(
        (status = 200, description = "Imported: the partition boots it at its next start", body = api::BootDiskImported),
        (status = 400, description = "no or an unknown `format`; the upload is not an image of that format, names a backing or data file, has a virtual size larger than the boot disk, or was cut short", body = ErrorBody),
        (status = 404, description = "no partition has that name or uuid (`not_found`)", body = ErrorBody),
        (status = 409, description = "the partition has no `boot_disk`, or it is not stopped (`invalid_transition`)", body = ErrorBody),
        (status = 413, description = "the upload is larger than an image of the boot disk's size can be (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "a `Content-Type` other than `application/octet-stream` (`unsupported_media_type`)", body = ErrorBody),
        Common
    )
)]
async fn import_boot_disk(
    State(d): D,
    caller: Auth,
    Path(name): Path<String>,
    Query(q): Query<ImportQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Json<api::BootDiskImported>> {
    let uuid = caller
        .partition(&d, &name, Action::Operate)
        .await?
        .into_inner()
        .uuid;
    if headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() != api::attach::OCTET_STREAM.as_bytes())
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send the image's bytes as `Content-Type: application/octet-stream`",
        ));
    }
    let lock = d.registry.lock(uuid);
    let _g = lock.lock().await;
    let rec = d.reload(uuid).await?;
    let Some(boot) = boot_disk::of(&config::configs_of(&rec)?).cloned() else {
        return Err(ApiError::transition(format!(
            "{} boots a brood image, not a disk image: define it with a boot disk (`brood vm create --disk-image`)",
            rec.name
        )));
    };
    if !matches!(rec.run_state, RunState::Stopped | RunState::Crashed) {
        return Err(ApiError::transition(format!(
            "{} is {}: stop it before replacing its boot disk",
            rec.name, rec.run_state
        )));
    }
    let format: api::ImageFormat = match q.format.as_deref() {
        Some(f) => f
            .parse()
            .map_err(|e: String| ApiError::bad_request(format!("format: {e}")))?,
        None => {
            return Err(ApiError::bad_request(
                "give the image's format as `?format=qcow2` or `?format=raw` (it is never guessed)",
            ));
        }
    };
    let cap = boot
        .size_gib
        .saturating_mul(1 << 30)
        .saturating_add(SLACK_BYTES);
    let upload = boot_disk::upload_path(&d.paths, uuid);
    let received = match receive(body, &upload, cap).await {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&upload).await;
            return Err(e);
        }
    };
    let info = boot_disk::import(&d.paths, uuid, &upload, format, boot.size_gib).await?;
    tracing::info!(partition = %rec.name, bytes = received, "imported its boot disk");
    Ok(Json(api::BootDiskImported {
        name: rec.name,
        format,
        received_bytes: received,
        image_virtual_bytes: info.virtual_bytes,
        size_gib: boot.size_gib,
    }))
}

/// Writes the body to `path`, at most `cap` bytes.
async fn receive(body: Body, path: &std::path::Path, cap: u64) -> ApiResult<u64> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| ApiError::internal("create the disk directory", &e))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::internal("create the upload's scratch file", &e))?;
    let mut frames = body.into_data_stream();
    let mut n = 0u64;
    while let Some(frame) = frames.next().await {
        let bytes =
            frame.map_err(|e| ApiError::bad_request(format!("the upload was cut short: {e}")))?;
        n = n.saturating_add(bytes.len() as u64);
        if n > cap {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!(
                    "the upload is over {} MiB, more than an image of the boot disk's size can be: give the VM a larger disk",
                    cap >> 20
                ),
            ));
        }
        file.write_all(&bytes)
            .await
            .map_err(|e| ApiError::internal("write the upload's scratch file", &e))?;
    }
    file.sync_all()
        .await
        .map_err(|e| ApiError::internal("sync the upload's scratch file", &e))?;
    Ok(n)
}

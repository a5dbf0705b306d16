//! The OpenAPI 3.1 document of the API, generated from the route table
//! (`berth_shared::routes`) and the body types the handlers and the CLI use
//! (`berth_shared::api`, `utoipa::ToSchema`). Served at `GET /v1/openapi.json`;
//! `docs/openapi.json` is a copy a test keeps current (`berth openapi > docs/openapi.json`).

use berth_shared::api::codes;
use berth_shared::routes::{self, Access, Endpoint, Media, Route};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Ref, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, HeaderBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths,
    RefOr, Required, ResponseBuilder, ResponsesBuilder,
};
use utoipa::{PartialSchema, ToSchema};

/// The security scheme names.
const BEARER: &str = "bearer";
const AGENT_CERT: &str = "agentCertificate";

/// The document, as pretty JSON with a final newline (what `docs/openapi.json` holds).
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut s = serde_json::to_string_pretty(&document()).expect("the document serializes");
        s.push('\n');
        s
    })
}

/// `GET /v1/openapi.json`.
pub async fn serve() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
}

pub fn document() -> OpenApi {
    let mut walk = Walk::default();
    routes::visit_all(&mut walk);
    walk.schemas.push((
        "ErrorBody".to_string(),
        berth_shared::api::ErrorBody::schema(),
    ));
    let mut components = ComponentsBuilder::new()
        .security_scheme(
            BEARER,
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`berth api-token create`): role viewer, operator or admin. \
                         Each operation names the least role it needs (`x-berth-role`).",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            AGENT_CERT,
            SecurityScheme::MutualTls {
                description: Some(
                    "The client certificate an agent got at enrollment, signed by the controller's CA."
                        .into(),
                ),
                extensions: None,
            },
        );
    // Sorted by name, once each: the document is byte-for-byte reproducible.
    let schemas: BTreeMap<String, RefOr<Schema>> = walk.schemas.into_iter().collect();
    for (name, schema) in schemas {
        components = components.schema(name, schema);
    }
    let tags = [
        "clusters",
        "hosts",
        "bundles",
        "agent",
        "enrollment",
        "controller",
    ];
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("berth controller API")
                .version(berth_shared::VERSION)
                .description(Some(
                    "The controller's HTTP API: what the berth CLI, the agents and automation call. \
                     Every refusal is an `ErrorBody` whose `code` is stable (listed per status); \
                     clients match on the code, never on the message.",
                ))
                .build(),
        )
        .paths(walk.paths)
        .components(Some(components.build()))
        .tags(Some(
            tags.iter()
                .map(|t| TagBuilder::new().name(*t).build())
                .collect::<Vec<_>>(),
        ))
        .build()
}

#[derive(Default)]
struct Walk {
    paths: Paths,
    schemas: Vec<(String, RefOr<Schema>)>,
}

impl routes::Visitor for Walk {
    fn visit<E: Endpoint>(&mut self) {
        let route = E::ROUTE;
        <E::Request as ToSchema>::schemas(&mut self.schemas);
        <E::Response as ToSchema>::schemas(&mut self.schemas);
        let mut op = OperationBuilder::new()
            .operation_id(Some(route.id))
            .summary(Some(route.summary))
            .tag(route.tag)
            .description(Some(access_text(route.access)));
        for name in route.params() {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        for p in <E::Query as utoipa::IntoParams>::into_params(|| Some(ParameterIn::Query)) {
            op = op.parameter(p);
        }
        if route.ok.contains(&304) {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("If-None-Match")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "The ETag of the status last seen: with `wait`, the answer is held until the status differs (304 if it did not)",
                    ))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if let Some(ct) = route.request.content_type() {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        ct,
                        ContentBuilder::new()
                            .schema(Some(<E::Request as PartialSchema>::schema()))
                            .build(),
                    )
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        op = op.responses(responses::<E>(&route));
        op = match route.access {
            Access::Public => op,
            Access::Agent => {
                op.security(SecurityRequirement::new(AGENT_CERT, Vec::<String>::new()))
            }
            Access::AgentOrViewer => op
                .security(SecurityRequirement::new(AGENT_CERT, Vec::<String>::new()))
                .security(SecurityRequirement::new(BEARER, Vec::<String>::new())),
            Access::Viewer | Access::Operator | Access::Admin => {
                op.security(SecurityRequirement::new(BEARER, Vec::<String>::new()))
            }
        };
        if let Some(role) = route.access.bearer_role() {
            let mut ext = utoipa::openapi::extensions::Extensions::default();
            ext.insert("x-berth-role".into(), serde_json::json!(role));
            op = op.extensions(Some(ext));
        }
        let method = match route.method {
            routes::Method::Get => HttpMethod::Get,
            routes::Method::Post => HttpMethod::Post,
            routes::Method::Put => HttpMethod::Put,
            routes::Method::Delete => HttpMethod::Delete,
        };
        self.paths
            .add_path_operation(openapi_path(route.path), vec![method], op.build());
    }
}

/// `{*rest}` is axum's; OpenAPI spells every parameter `{rest}`.
fn openapi_path(path: &str) -> String {
    path.replace("{*", "{")
}

fn access_text(a: Access) -> &'static str {
    match a {
        Access::Public => "Open: no credentials.",
        Access::Agent => "Agents only: mutual TLS with the certificate issued at enrollment.",
        Access::AgentOrViewer => {
            "An agent's client certificate, or a bearer token of role viewer or higher."
        }
        Access::Viewer => "Bearer token, role viewer or higher.",
        Access::Operator => "Bearer token, role operator or admin.",
        Access::Admin => "Bearer token, role admin.",
    }
}

fn responses<E: Endpoint>(route: &Route) -> utoipa::openapi::Responses {
    let mut b = ResponsesBuilder::new();
    for (i, status) in route.ok.iter().enumerate() {
        let mut r = ResponseBuilder::new().description(match status {
            304 => "Not modified: the status still has the ETag sent in `If-None-Match`",
            206 => "The requested range",
            _ if i == 0 => "Success",
            _ => "Success (see the summary)",
        });
        if let (Some(ct), false) = (route.response.content_type(), *status == 304) {
            let schema = match route.response {
                Media::Json => <E::Response as PartialSchema>::schema(),
                // Bytes or text of the route's own media type.
                _ => ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type(ct)
                    .into(),
            };
            r = r.content(ct, ContentBuilder::new().schema(Some(schema)).build());
        }
        if *status == 200 && route.ok.contains(&304) {
            r = r.header(
                "ETag",
                header(
                    Type::String,
                    "Send it back in `If-None-Match` (with `wait`) to be answered when the status changes",
                ),
            );
        }
        b = b.response(status.to_string(), r.build());
    }
    // Files served as files (ranges, conditional requests): their answers without a body.
    if route.response == Media::Octets && route.method == routes::Method::Get {
        for (status, text) in [
            (304, "Not modified (`If-None-Match` / `If-Modified-Since`)"),
            (
                412,
                "Precondition failed (`If-Match` / `If-Unmodified-Since`)",
            ),
            (416, "The range asked for is not in the file"),
        ] {
            b = b.response(
                status.to_string(),
                ResponseBuilder::new().description(text).build(),
            );
        }
    }
    for (status, codes) in refusals(route) {
        let schema = AllOfBuilder::new()
            .item(Ref::from_schema_name("ErrorBody"))
            .item(
                ObjectBuilder::new().property(
                    "code",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(codes.iter().copied())),
                ),
            );
        let text = format!("Refused: `code` is one of {}", codes.join(", "));
        let mut r = ResponseBuilder::new().description(text).content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        );
        if status == 503 {
            r = r.header(
                "Retry-After",
                header(Type::Integer, "Seconds to wait before asking again"),
            );
        }
        b = b.response(status.to_string(), r.build());
    }
    b.build()
}

/// A response header of a plain type.
fn header(ty: Type, text: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(ty))
        .description(Some(text))
        .build()
}

/// Every refusal of a route, by status: its own and the ones every route of its kind can
/// give.
fn refusals(route: &Route) -> BTreeMap<u16, Vec<&'static str>> {
    let mut all: Vec<(u16, &'static str)> = route.errors.to_vec();
    if route.access.bearer_role().is_some() {
        all.extend([(401, codes::UNAUTHENTICATED), (403, codes::FORBIDDEN)]);
    }
    if route.access.takes_client_cert() {
        all.extend([
            (401, codes::CLIENT_CERT_REQUIRED),
            (401, codes::CERTIFICATE_EXPIRED),
            (401, codes::HOST_UNKNOWN),
            (401, codes::HOST_REVOKED),
        ]);
    }
    if route.request != Media::None {
        all.push((400, codes::BAD_REQUEST));
    }
    // Every body but a GET's is read and bounded (also where none is expected).
    if route.method != routes::Method::Get {
        all.push((413, codes::TOO_LARGE));
    }
    if route.request == Media::Json {
        all.extend([(415, codes::BAD_REQUEST), (422, codes::BAD_REQUEST)]);
    }
    if !route.params().is_empty() || route.method == routes::Method::Get {
        all.push((400, codes::BAD_REQUEST));
    }
    all.push((500, codes::INTERNAL));
    let mut by: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    for (status, code) in all {
        let v = by.entry(status).or_default();
        if !v.contains(&code) {
            v.push(code);
        }
    }
    for v in by.values_mut() {
        v.sort_unstable();
    }
    by
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/openapi.json` is the document this code generates. After changing a route or
    /// a body: `cargo run -p berth-controller -- openapi > docs/openapi.json`.
    #[test]
    fn the_checked_in_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == json(),
            "docs/openapi.json is out of date: run `cargo run -p berth-controller -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_route_is_in_the_document() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for r in routes::ALL {
            let op = &doc["paths"][openapi_path(r.path)][r.method.as_str().to_lowercase()];
            assert_eq!(op["operationId"], r.id, "{} {}", r.method.as_str(), r.path);
            assert!(op["responses"]["500"].is_object(), "{}", r.id);
        }
        // Every schema a body refers to is defined.
        let text = json();
        for name in text.split("\"#/components/schemas/").skip(1) {
            let name = &name[..name.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{name} is referred to but not defined"
            );
        }
    }
}

//! One provider request from arrival to answer, and the steps every provider's endpoints
//! share: the request log, the key check, refusals, the dialled-in faults, creating the call,
//! answering with it. Each provider passes in only what is its own (error bodies, wording,
//! its call object).

use crate::common::{json, parse_json_body, refuse};
use crate::config::Provider;
use crate::faults::{gate, ConnKill, FaultAnswers};
use crate::log::RecordGuard;
use crate::mutex::lock;
use crate::state::{CallState, CallStore, NewCall, St};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use provider_contract::Operation;
use serde_json::Value;

/// A request body as the handlers take it (reading it never fails the request by itself).
pub(crate) type Body = Result<Bytes, BytesRejection>;

/// The answer to a request that goes no further (a wrong key, a refused body, a fault); boxed,
/// as answers are large.
pub(crate) type Refusal = Box<Response>;

/// A provider's call object as of a moment (unix µs).
pub(crate) type CallJson = fn(&CallState, i64) -> Value;

/// A request being answered: its record in the request log.
pub(crate) struct Exchange<'a> {
    st: &'a St,
    rec: RecordGuard,
}

impl<'a> Exchange<'a> {
    /// Records the request's arrival.
    pub fn begin(st: &'a St, provider: Provider, method: &str, uri: &Uri) -> Exchange<'a> {
        Exchange { st, rec: st.log.begin(provider, method, uri.path(), uri.query()) }
    }

    /// Records the answer's status (`Err` = a refusal) and returns the answer.
    pub fn answer(self, resp: Result<Response, Refusal>) -> Response {
        let resp = resp.unwrap_or_else(|refusal| *refusal);
        self.rec.finish(resp.status().as_u16());
        resp
    }

    /// Records the request's body and whether its key passed (`auth`: `Err` = the refusal).
    pub fn received(&self, body: Value, auth: Result<(), Refusal>) -> Result<(), Refusal> {
        self.rec.update(|r| {
            r.auth_ok = auth.is_ok();
            r.body = body;
        });
        auth
    }

    /// [`Exchange::received`] for a JSON body (logged as text when it is not JSON); the parse
    /// result (`Err`: why it is not JSON) once the key has passed.
    pub fn received_json(&self, body: &Body, auth: Result<(), Refusal>) -> Result<Result<Value, String>, Refusal> {
        let (logged, parsed) = parse_json_body(body);
        self.received(logged, auth)?;
        Ok(parsed)
    }

    /// The body of a JSON create request for `op`, once the key has passed, the body is JSON
    /// and the request checks accept it; each refusal is answered by `bad_request(errors)`.
    pub fn checked_json(
        &self,
        body: &Body,
        auth: Result<(), Refusal>,
        op: Operation,
        bad_request: fn(&[String]) -> Response,
    ) -> Result<Value, Refusal> {
        let parsed = self.received_json(body, auth)?;
        let body = self.check(parsed.map_err(|e| vec![e]), bad_request)?;
        self.check(self.st.contract.check(op, &body), bad_request)?;
        Ok(body)
    }

    /// The log: what the request's details say (the destination, the metadata, ...).
    pub fn record(&self) -> &RecordGuard {
        &self.rec
    }

    /// Logs the request as refused by the request checks and answers `answer(errors)`.
    pub fn refuse(&self, errors: &[String], answer: impl FnOnce(&[String]) -> Response) -> Response {
        refuse(&self.rec, errors);
        answer(errors)
    }

    /// The request checks' verdict: `Err` = refused, as [`Exchange::refuse`] answers it.
    pub fn check<T>(&self, verdict: Result<T, Vec<String>>, answer: impl FnOnce(&[String]) -> Response) -> Result<T, Refusal> {
        verdict.map_err(|errors| Box::new(self.refuse(&errors, answer)))
    }

    /// Records where the call goes, applies the dialled-in faults and latency, then stores the
    /// call: its id, or the provider's answer to the fault. A dropped connection never returns.
    pub async fn place(&self, kill: &ConnKill, call: NewCall, faults: &FaultAnswers) -> Result<String, Refusal> {
        self.rec.update(|r| {
            r.to = Some(call.to.clone());
            r.metadata = call.metadata.clone();
        });
        let (duration_ms, end_reason) = gate(self.st, &self.rec, kill, call.provider, &call.to, faults).await.map_err(Box::new)?;
        let id = call.call_id.clone();
        self.st.create_call(call, duration_ms, end_reason);
        self.rec.update(|r| r.call_id = Some(id.clone()));
        Ok(id)
    }

    /// 201 with the new call as it was when created (never already further on), or
    /// `error(message)` if a reset took it away in the meantime.
    pub fn created(&self, id: &str, call_json: CallJson, error: impl FnOnce(&str) -> Response) -> Response {
        match lock(&self.st.calls).get(id) {
            Some(c) => json(StatusCode::CREATED, call_json(c, c.call.created_at_us)),
            None => error("call vanished (reset during create)"),
        }
    }
}

/// A key check's verdict: `Err(refusal())` unless `ok`.
pub(crate) fn key_check(ok: bool, refusal: impl FnOnce() -> Response) -> Result<(), Refusal> {
    if ok {
        Ok(())
    } else {
        Err(Box::new(refusal()))
    }
}

/// A `GET` request: logged, its key checked (`auth`: `Err` = the refusal), then answered by
/// `read` from the stored calls and the clock's present.
pub(crate) fn read(
    st: &St,
    provider: Provider,
    uri: &Uri,
    auth: Result<(), Refusal>,
    read: impl FnOnce(&CallStore, i64) -> Response,
) -> Response {
    let ex = Exchange::begin(st, provider, "GET", uri);
    let resp = ex.received(Value::Null, auth).map(|()| {
        let now = st.clock.now_us();
        read(&lock(&st.calls), now)
    });
    ex.answer(resp)
}

/// `GET` one of `provider`'s calls by id: the call as it is now, or `not_found`.
pub(crate) fn get_call(
    st: &St,
    provider: Provider,
    uri: &Uri,
    auth: Result<(), Refusal>,
    id: &str,
    call_json: CallJson,
    not_found: impl FnOnce() -> Response,
) -> Response {
    read(st, provider, uri, auth, |store, now| match store.get(id).filter(|c| c.call.provider == provider) {
        Some(c) => json(StatusCode::OK, call_json(c, now)),
        None => not_found(),
    })
}

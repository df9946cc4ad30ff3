//! Background processes: `/sandboxes/{id}/processes…` (start, list, show,
//! signal, stdin, resize, output pages). Following output is in
//! `follow.rs`, attaching in `attach.rs`.

use emberd_api::{
    OutputPage, ProcessInfo, ProcessList, ProcessStarted, PtySize, SignalRequest,
    StartProcessRequest,
};
use reqwest::Method;

use crate::{sandbox_route, Client, ClientError};

fn process_route(id: &str, pid: u32, rest: &str) -> Result<String, ClientError> {
    if rest.is_empty() {
        sandbox_route(id, &format!("processes/{pid}"))
    } else {
        sandbox_route(id, &format!("processes/{pid}/{rest}"))
    }
}

impl Client {
    /// `POST /sandboxes/{id}/processes`: starts a process that outlives the
    /// request; returns its pid.
    pub async fn start_process(
        &self,
        id: &str,
        request: &StartProcessRequest,
    ) -> Result<u32, ClientError> {
        let route = sandbox_route(id, "processes")?;
        let started: ProcessStarted = self
            .call(Method::POST, &route, Some(request), self.request_timeout())
            .await?;
        Ok(started.pid)
    }

    /// `GET /sandboxes/{id}/processes`, oldest first.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>, ClientError> {
        let route = sandbox_route(id, "processes")?;
        let list: ProcessList = self
            .call(Method::GET, &route, None::<&()>, self.request_timeout())
            .await?;
        Ok(list.processes)
    }

    /// `GET /sandboxes/{id}/processes/{pid}`.
    pub async fn get_process(&self, id: &str, pid: u32) -> Result<ProcessInfo, ClientError> {
        let route = process_route(id, pid, "")?;
        self.call(Method::GET, &route, None::<&()>, self.request_timeout())
            .await
    }

    /// `POST …/processes/{pid}/signal`: `signal` is a name with or without
    /// `SIG` ("TERM", "SIGKILL") or a number.
    pub async fn signal_process(
        &self,
        id: &str,
        pid: u32,
        signal: &str,
    ) -> Result<(), ClientError> {
        let route = process_route(id, pid, "signal")?;
        let body = SignalRequest {
            signal: signal.to_owned(),
        };
        self.send(Method::POST, &route, Some(&body), self.request_timeout())
            .await
            .map(drop)
    }

    /// `POST …/processes/{pid}/stdin`: writes `bytes` to the process's stdin.
    pub async fn write_stdin(
        &self,
        id: &str,
        pid: u32,
        bytes: impl Into<reqwest::Body>,
    ) -> Result<(), ClientError> {
        self.stdin(id, pid, bytes.into(), false).await
    }

    /// `POST …/processes/{pid}/stdin?eof=true` with no body: closes stdin.
    pub async fn close_stdin(&self, id: &str, pid: u32) -> Result<(), ClientError> {
        self.stdin(id, pid, reqwest::Body::from(Vec::new()), true)
            .await
    }

    async fn stdin(
        &self,
        id: &str,
        pid: u32,
        body: reqwest::Body,
        eof: bool,
    ) -> Result<(), ClientError> {
        let route = process_route(id, pid, "stdin")?;
        let query = if eof {
            vec![("eof", "true".to_owned())]
        } else {
            Vec::new()
        };
        let mut request = self
            .request(Method::POST, self.url(&route, &query)?)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(deadline) = self.request_timeout() {
            request = request.timeout(deadline);
        }
        self.execute(request).await.map(drop)
    }

    /// `POST …/processes/{pid}/resize`: the new size of a process's terminal.
    pub async fn resize_process(
        &self,
        id: &str,
        pid: u32,
        size: PtySize,
    ) -> Result<(), ClientError> {
        let route = process_route(id, pid, "resize")?;
        self.send(Method::POST, &route, Some(&size), self.request_timeout())
            .await
            .map(drop)
    }

    /// `GET …/processes/{pid}/output?cursor=N`: the output kept from log
    /// offset `cursor` on, without waiting for more.
    pub async fn output_page(
        &self,
        id: &str,
        pid: u32,
        cursor: u64,
    ) -> Result<OutputPage, ClientError> {
        let route = process_route(id, pid, "output")?;
        let mut request = self.request(
            Method::GET,
            self.url(&route, &[("cursor", cursor.to_string())])?,
        );
        if let Some(deadline) = self.request_timeout() {
            request = request.timeout(deadline);
        }
        let response = self.execute(request).await?;
        self.json(response, &route).await
    }
}

//! `sandpit.v1.SandboxService`.

use sandpit_proto::status::to_status;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth::{Gate, Method};
use crate::proto;
use crate::proto::sandbox_service_server::SandboxService;
use sandpit_core::lifecycle::{CopyOut, ExecInput, Forwarded, Manager};
use sandpit_core::policy::CreateSandbox;
use sandpit_core::Error;
use sandpit_proto::convert::{duration, exec_spec, extend_request, filter, id, terminal_size};

type StatusStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct SandboxApi {
    manager: Arc<Manager>,
    gate: Gate,
}

impl SandboxApi {
    pub fn new(manager: Arc<Manager>, gate: Gate) -> Self {
        SandboxApi { manager, gate }
    }
}

/// tonic refuses an over-size message with OUT_OF_RANGE; gRPC says
/// RESOURCE_EXHAUSTED. For the messages after the first of a client stream,
/// which reach the handler as a domain error rather than as tonic's status.
fn oversize(s: &Status) -> Error {
    Error::ResourceExhausted(format!("{} (limits.max_message_bytes)", s.message()))
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl SandboxService for SandboxApi {
    async fn create_sandbox(
        &self,
        req: Request<proto::CreateSandboxRequest>,
    ) -> Result<Response<proto::Sandbox>, Status> {
        let caller = self.gate.authorize(&req, Method::CreateSandbox).await.map_err(to_status)?;
        let create = CreateSandbox::try_from(req.into_inner()).map_err(to_status)?;
        let sb = self.manager.create(&caller, create).await.map_err(to_status)?;
        Ok(Response::new(sb.into()))
    }

    async fn get_sandbox(&self, req: Request<proto::GetSandboxRequest>) -> Result<Response<proto::Sandbox>, Status> {
        let caller = self.gate.authorize(&req, Method::GetSandbox).await.map_err(to_status)?;
        let sandbox = req.into_inner().id;
        id("id", &sandbox).map_err(to_status)?;
        Ok(Response::new(self.manager.get(&caller, &sandbox).await.map_err(to_status)?.into()))
    }

    async fn list_sandboxes(
        &self,
        req: Request<proto::ListSandboxesRequest>,
    ) -> Result<Response<proto::ListSandboxesResponse>, Status> {
        let caller = self.gate.authorize(&req, Method::ListSandboxes).await.map_err(to_status)?;
        let r = req.into_inner();
        filter("experiment", &r.experiment).map_err(to_status)?;
        let list = self.manager.list(&caller, opt(r.experiment), r.include_ended).await.map_err(to_status)?;
        Ok(Response::new(proto::ListSandboxesResponse { sandboxes: list.into_iter().map(Into::into).collect() }))
    }

    async fn extend_sandbox(
        &self,
        req: Request<proto::ExtendSandboxRequest>,
    ) -> Result<Response<proto::Sandbox>, Status> {
        let caller = self.gate.authorize(&req, Method::ExtendSandbox).await.map_err(to_status)?;
        let (id, ttl) = extend_request(req.into_inner()).map_err(to_status)?;
        Ok(Response::new(self.manager.extend(&caller, &id, ttl).await.map_err(to_status)?.into()))
    }

    async fn delete_sandbox(
        &self,
        req: Request<proto::DeleteSandboxRequest>,
    ) -> Result<Response<proto::Sandbox>, Status> {
        let caller = self.gate.authorize(&req, Method::DeleteSandbox).await.map_err(to_status)?;
        let sandbox = req.into_inner().id;
        id("id", &sandbox).map_err(to_status)?;
        Ok(Response::new(self.manager.delete(&caller, &sandbox).await.map_err(to_status)?.into()))
    }

    type WatchSandboxesStream = StatusStream<proto::SandboxEvent>;

    async fn watch_sandboxes(
        &self,
        req: Request<proto::WatchSandboxesRequest>,
    ) -> Result<Response<Self::WatchSandboxesStream>, Status> {
        let caller = self.gate.authorize(&req, Method::WatchSandboxes).await.map_err(to_status)?;
        let r = req.into_inner();
        filter("id", &r.id).map_err(to_status)?;
        filter("experiment", &r.experiment).map_err(to_status)?;
        let events = self.manager.watch(&caller, opt(r.id), opt(r.experiment));
        Ok(Response::new(caller.hold(events.map(|e| Ok(e.into()))).boxed()))
    }

    type ExecStream = StatusStream<proto::ExecOutput>;

    async fn exec(&self, req: Request<proto::ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        let caller = self.gate.authorize(&req, Method::Exec).await.map_err(to_status)?;
        let r = req.into_inner();
        id("id", &r.id).map_err(to_status)?;
        let timeout = r.timeout.as_ref().map(|d| duration("timeout", d)).transpose().map_err(to_status)?;
        if r.tty.is_some() {
            return Err(to_status(Error::invalid("tty", "a terminal needs ExecInteractive")));
        }
        let spec = exec_spec(r.command, r.env, r.workdir).map_err(to_status)?;
        let out = self.manager.exec(&caller, &r.id, spec, timeout).await.map_err(to_status)?;
        Ok(Response::new(caller.hold(out.map(|o| o.map(Into::into).map_err(to_status))).boxed()))
    }

    type ExecInteractiveStream = StatusStream<proto::ExecOutput>;

    async fn exec_interactive(
        &self,
        req: Request<tonic::Streaming<proto::ExecInteractiveRequest>>,
    ) -> Result<Response<Self::ExecInteractiveStream>, Status> {
        use proto::exec_interactive_request::Input;
        let caller = self.gate.authorize(&req, Method::ExecInteractive).await.map_err(to_status)?;
        let mut stream = req.into_inner();
        let r = match stream.message().await? {
            Some(proto::ExecInteractiveRequest { input: Some(Input::Start(r)) }) => r,
            _ => return Err(to_status(Error::invalid("start", "the first message must be the exec request"))),
        };
        id("id", &r.id).map_err(to_status)?;
        let timeout = r.timeout.as_ref().map(|d| duration("timeout", d)).transpose().map_err(to_status)?;
        let tty = r.tty.as_ref().map(|t| terminal_size("tty", t)).transpose().map_err(to_status)?;
        let mut spec = exec_spec(r.command, r.env, r.workdir).map_err(to_status)?;
        spec.tty = tty;
        let input = stream
            .map(|m| match m {
                Ok(proto::ExecInteractiveRequest { input: Some(Input::Stdin(b)) }) => Ok(ExecInput::Stdin(b)),
                Ok(proto::ExecInteractiveRequest { input: Some(Input::CloseStdin(_)) }) => Ok(ExecInput::CloseStdin),
                Ok(proto::ExecInteractiveRequest { input: Some(Input::Resize(t)) }) => {
                    terminal_size("resize", &t).map(ExecInput::Resize)
                }
                Ok(_) => Err(Error::invalid("start", "only the first message may be the exec request")),
                Err(s) => Err(Error::Cancelled(format!("the client's input broke off: {}", s.message()))),
            })
            .boxed();
        let out = self.manager.exec_interactive(&caller, &r.id, spec, timeout, Some(input)).await.map_err(to_status)?;
        Ok(Response::new(caller.hold(out.map(|o| o.map(Into::into).map_err(to_status))).boxed()))
    }

    type PullImageStream = StatusStream<proto::PullProgress>;

    async fn pull_image(
        &self,
        req: Request<proto::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let caller = self.gate.authorize(&req, Method::PullImage).await.map_err(to_status)?;
        let r = req.into_inner();
        let create = r.create.map(CreateSandbox::try_from).transpose().map_err(to_status)?;
        let progress =
            self.manager.pull_image(&caller, &r.profile, opt(r.image).as_deref(), create).await.map_err(to_status)?;
        let done = futures_util::stream::once(async { Ok(proto::PullProgress { done: true, ..Default::default() }) });
        // Progress, then a final `done` message unless the pull failed.
        let stream = progress.map(|p| p.map(Into::into).map_err(to_status)).chain(done);
        let mut failed = false;
        let stream = stream.take_while(move |item| {
            let keep = !failed;
            failed |= item.is_err();
            std::future::ready(keep)
        });
        Ok(Response::new(caller.hold(stream).boxed()))
    }

    async fn copy_in(
        &self,
        req: Request<tonic::Streaming<proto::CopyInRequest>>,
    ) -> Result<Response<proto::FileTransfer>, Status> {
        use proto::copy_in_request::Part;
        let caller = self.gate.authorize(&req, Method::CopyIn).await.map_err(to_status)?;
        let mut stream = req.into_inner();
        // An over-size header is answered RESOURCE_EXHAUSTED by the server's layer.
        let header = match stream.message().await? {
            Some(proto::CopyInRequest { part: Some(Part::Header(h)) }) => h,
            _ => return Err(to_status(Error::invalid("header", "the first message must be the header"))),
        };
        id("id", &header.id).map_err(to_status)?;
        let data = stream
            .map(|m| match m {
                Ok(proto::CopyInRequest { part: Some(Part::Chunk(b)) }) => Ok(b),
                Ok(_) => Err(Error::invalid("chunk", "only the first message may be a header")),
                Err(s) if s.code() == tonic::Code::OutOfRange => Err(oversize(&s)),
                Err(s) => Err(Error::Cancelled(format!("the upload broke off: {}", s.message()))),
            })
            .boxed();
        let t = self.manager.copy_in(&caller, &header.id, &header.path, data).await.map_err(to_status)?;
        Ok(Response::new(t.into()))
    }

    type PortForwardStream = StatusStream<proto::PortForwardResponse>;

    async fn port_forward(
        &self,
        req: Request<tonic::Streaming<proto::PortForwardRequest>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        use proto::port_forward_request::Part;
        let caller = self.gate.authorize(&req, Method::PortForward).await.map_err(to_status)?;
        let mut stream = req.into_inner();
        let header = match stream.message().await? {
            Some(proto::PortForwardRequest { part: Some(Part::Header(h)) }) => h,
            _ => return Err(to_status(Error::invalid("header", "the first message must be the header"))),
        };
        id("id", &header.id).map_err(to_status)?;
        let port = u16::try_from(header.port).ok().filter(|p| *p > 0).ok_or_else(|| {
            to_status(Error::invalid("port", format!("{} is not a port from 1 to 65535", header.port)))
        })?;
        let input = stream
            .map(|m| match m {
                Ok(proto::PortForwardRequest { part: Some(Part::Data(b)) }) => Ok(b),
                Ok(_) => Err(Error::invalid("data", "only the first message may be a header")),
                Err(s) => Err(Error::Cancelled(format!("the client's side broke off: {}", s.message()))),
            })
            .boxed();
        let out = self.manager.port_forward(&caller, &header.id, port, input).await.map_err(to_status)?;
        Ok(Response::new(
            caller
                .hold(out.map(|d| {
                    d.map(|f| match f {
                        Forwarded::Data(data) => proto::PortForwardResponse { data, notice: String::new() },
                        Forwarded::Notice(notice) => proto::PortForwardResponse { data: vec![], notice },
                    })
                    .map_err(to_status)
                }))
                .boxed(),
        ))
    }

    type CopyOutStream = StatusStream<proto::CopyOutChunk>;

    async fn copy_out(&self, req: Request<proto::CopyOutRequest>) -> Result<Response<Self::CopyOutStream>, Status> {
        let caller = self.gate.authorize(&req, Method::CopyOut).await.map_err(to_status)?;
        let r = req.into_inner();
        id("id", &r.id).map_err(to_status)?;
        let out = self.manager.copy_out(&caller, &r.id, &r.path).await.map_err(to_status)?;
        Ok(Response::new(
            caller
                .hold(out.map(|item| match item {
                    Ok(CopyOut::Chunk(b)) => Ok(proto::CopyOutChunk { chunk: b, summary: None }),
                    Ok(CopyOut::Done(t)) => Ok(proto::CopyOutChunk { chunk: vec![], summary: Some(t.into()) }),
                    Err(e) => Err(to_status(e)),
                }))
                .boxed(),
        ))
    }
}

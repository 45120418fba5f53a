//! `courier echo`: the benchmark target. Every data message goes back with its opcode; no
//! auth, no storage. It exists to measure the WebSocket stack and the reactor alone.

use std::net::SocketAddr;

use crate::net::{Admission, ConnId, NetStats, Out, Service};
use crate::ws::frame::OpCode;
use crate::ws::handshake::{self, Request, Upgrade};

pub struct Echo;

impl Service for Echo {
    fn http(&mut self, request: &Request<'_>, _: SocketAddr, _: NetStats, out: &mut Vec<u8>) {
        let (status, reason, body): (u16, &str, &[u8]) = match request.path() {
            "/healthz" => (200, "OK", b"ok\n"),
            _ => (
                404,
                "Not Found",
                b"courier echo: connect with a WebSocket client\n",
            ),
        };
        handshake::write_response(out, status, reason, "text/plain; charset=utf-8", &[], body);
    }

    fn upgrade(
        &mut self,
        _: ConnId,
        _: &Request<'_>,
        _: &Upgrade<'_>,
        _: SocketAddr,
        _: NetStats,
        _: &mut Vec<u8>,
    ) -> Admission {
        Admission::Accept {
            protocol: None,
            max_message: None,
            read_rate: 0,
        }
    }

    fn message(&mut self, conn: ConnId, opcode: OpCode, payload: &[u8], out: &mut Out<'_>) {
        out.send(conn, opcode, payload);
    }
}

//! The four ask IOCTLs and the file cleanup, at PASSIVE_LEVEL on the
//! control device's queue. Each completes its request exactly once, or
//! (get-request) hands it to the workers' manual queue, from which the ask
//! path, a disconnect, the file cleanup, unload or the framework's own
//! cancellation completes it.

use core::sync::atomic::Ordering;

use procguard_protocol::ask::{
    AskReply, AskRequest, ConnectRequest, ConnectResponse, ASK_PROTOCOL_VERSION, IOCTL_ASK_CONNECT,
    IOCTL_ASK_DISCONNECT, IOCTL_ASK_GET_REQUEST, IOCTL_ASK_REPLY,
};

use super::handler_connection::HandlerConnection;
use super::slot_pool::SLOTS;
use super::{AskBroker, Handover};
use crate::ffi::{
    STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_DEVICE_STATE,
    STATUS_INVALID_PARAMETER, STATUS_NOT_FOUND, STATUS_SHARING_VIOLATION, STATUS_SUCCESS,
    WDFFILEOBJECT, WDFREQUEST,
};
use crate::platform::manual_queue::{complete, complete_with_output, file_object_of};

/// Routes one ask IOCTL.
pub(super) fn handle(
    broker: &AskBroker,
    request: WDFREQUEST,
    code: u32,
    input: &[u8],
    output_length: usize,
) {
    match code {
        IOCTL_ASK_CONNECT => connect(broker, request, input, output_length),
        IOCTL_ASK_GET_REQUEST => get_request(broker, request, output_length),
        IOCTL_ASK_REPLY => reply(broker, request, input),
        IOCTL_ASK_DISCONNECT => disconnect(broker, request),
        _ => complete(request, STATUS_INVALID_DEVICE_REQUEST, 0),
    }
}

/// `IOCTL_ASK_CONNECT`: the calling process becomes the handler, on this
/// request's file object. A second connection gets STATUS_SHARING_VIOLATION.
fn connect(broker: &AskBroker, request: WDFREQUEST, input: &[u8], output_length: usize) {
    if ConnectRequest::parse(input).is_err() {
        complete(request, STATUS_INVALID_PARAMETER, 0);
        return;
    }
    if output_length < ConnectResponse::SIZE {
        complete(request, STATUS_BUFFER_TOO_SMALL, 0);
        return;
    }
    // The IOCTL runs in the caller's context: its current process is the
    // handler's (read before the lock: these are PASSIVE-level queries).
    let connection = HandlerConnection::of_current_process(file_object_of(request));
    let refused = {
        let mut shared = broker.shared.lock();
        if shared.closed {
            Some(STATUS_INVALID_DEVICE_STATE)
        } else if shared.connection.is_some() {
            Some(STATUS_SHARING_VIOLATION)
        } else {
            shared.connection = Some(connection);
            broker.handler_pid.store(connection.pid, Ordering::Relaxed);
            None
        }
    };
    if let Some(status) = refused {
        complete(request, status, 0);
        return;
    }
    let response = ConnectResponse {
        version: ASK_PROTOCOL_VERSION,
        slots: SLOTS as u32,
        timeout_ms: broker.timeout_ms.load(Ordering::Relaxed),
        handler_pid: connection.pid,
    };
    complete_with_output(request, &response.to_bytes());
}

/// `IOCTL_ASK_GET_REQUEST`: the oldest waiting request at once, else the
/// request pends in the workers' queue (cancellable by the framework).
fn get_request(broker: &AskBroker, request: WDFREQUEST, output_length: usize) {
    if output_length < AskRequest::SIZE {
        complete(request, STATUS_BUFFER_TOO_SMALL, 0);
        return;
    }
    let file = file_object_of(request);
    // Serving and pending under the lock that the ask path enqueues under:
    // a request never waits in the FIFO while a worker is pended.
    let outcome = {
        let mut shared = broker.shared.lock();
        if !shared
            .connection
            .is_some_and(|connection| connection.is_on(file))
        {
            Err(STATUS_INVALID_DEVICE_STATE)
        } else if let Some(slot) = shared.fifo.pop_front() {
            Ok(Some(Handover {
                worker: request,
                bytes: shared.slots.deliver(slot),
            }))
        } else {
            broker.workers.forward(request).map(|()| None)
        }
    };
    match outcome {
        Ok(Some(handover)) => handover.complete(),
        Ok(None) => {}
        Err(status) => complete(request, status, 0),
    }
}

/// `IOCTL_ASK_REPLY`: validates, records the answer and wakes the waiter.
fn reply(broker: &AskBroker, request: WDFREQUEST, input: &[u8]) {
    let Ok(answer) = AskReply::parse(input) else {
        complete(request, STATUS_INVALID_PARAMETER, 0);
        return;
    };
    let file = file_object_of(request);
    let status = {
        let mut shared = broker.shared.lock();
        if !shared
            .connection
            .is_some_and(|connection| connection.is_on(file))
        {
            STATUS_INVALID_DEVICE_STATE
        } else {
            match shared.slots.answer(
                answer.id,
                answer.generation,
                answer.desired_access,
                answer.result_code,
            ) {
                Ok(slot) => {
                    // Under the lock: the owner reads the state under it too.
                    if let Some(event) = broker.events.get(slot) {
                        event.set();
                    }
                    STATUS_SUCCESS
                }
                Err(_) => {
                    broker.totals.late_replies.fetch_add(1, Ordering::Relaxed);
                    STATUS_NOT_FOUND
                }
            }
        }
    };
    complete(request, status, 0);
}

/// `IOCTL_ASK_DISCONNECT`: ends the connection this handle made.
fn disconnect(broker: &AskBroker, request: WDFREQUEST) {
    let file = file_object_of(request);
    let status = if broker.release(Some(file)) {
        STATUS_SUCCESS
    } else {
        STATUS_INVALID_DEVICE_STATE
    };
    complete(request, status, 0);
}

/// The control device's file cleanup: the connected handle closing (or its
/// process ending) disconnects.
pub(super) fn file_cleanup(broker: &AskBroker, file: WDFFILEOBJECT) {
    broker.release(Some(file));
}

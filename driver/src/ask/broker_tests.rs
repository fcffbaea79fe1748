//! The broker against the host doubles: real kernel events and a real spin
//! lock, so a callback thread waits while a "handler" thread pends
//! get-requests and replies, as on Windows.

extern crate std;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use procguard_policy::AskPlan;
use procguard_protocol::ask::{
    AskObject, AskOutcome, AskReply, AskRequest, ConnectRequest, ConnectResponse, ImageName,
    ASK_PROTOCOL_VERSION, IOCTL_ASK_CONNECT, IOCTL_ASK_DISCONNECT, IOCTL_ASK_GET_REQUEST,
    IOCTL_ASK_REPLY,
};

use super::{AskAnswer, AskBroker, SLOTS};
use crate::ffi::ntddk::{cancel_queued, completion_of, new_request, reset_host, with_host};
use crate::ffi::{
    NTSTATUS, STATUS_BUFFER_TOO_SMALL, STATUS_CANCELLED, STATUS_INVALID_DEVICE_STATE,
    STATUS_INVALID_PARAMETER, STATUS_NOT_FOUND, STATUS_SHARING_VIOLATION, STATUS_SUCCESS,
    WDFDEVICE, WDFFILEOBJECT, WDFREQUEST,
};

const HANDLER_FILE: usize = 0xAA00;
const HANDLER_PID: u32 = 4242;
const TERMINATE: u32 = 0x0001;
const VM_WRITE: u32 = 0x0020;
const DESIRED: u32 = 0x1F_FFFF;

fn plan(fallback_strip: u32) -> AskPlan {
    AskPlan {
        rights: TERMINATE | VM_WRITE,
        fallback_strip,
        rule: None,
        askable: true,
    }
}

fn request_for(target: u32) -> AskRequest {
    AskRequest {
        id: 0,
        generation: 0,
        timestamp: 1,
        object: AskObject::Process,
        duplication: false,
        rule_id: 0,
        process_id: target,
        thread_id: 0,
        originator_process_id: 100,
        originator_thread_id: 101,
        source_process_id: 0,
        target_process_id: 0,
        original_desired_access: DESIRED,
        desired_access: DESIRED,
        ask_rights: TERMINATE | VM_WRITE,
        fallback_access: DESIRED & !TERMINATE,
        timeout_ms: 0,
        requester_pid: 100,
        requester_create_time: 5,
        target_create_time: 6,
        requester_image: ImageName::EMPTY,
        target_image: ImageName::EMPTY,
    }
}

fn broker() -> Arc<AskBroker> {
    reset_host();
    let broker = AskBroker::new().expect("memory");
    // SAFETY: the host double's device.
    unsafe { broker.create_queues(0xDE71 as WDFDEVICE) }.expect("queue");
    Arc::new(broker)
}

fn ioctl(broker: &AskBroker, file: usize, code: u32, input: &[u8], output: usize) -> WDFREQUEST {
    let request = new_request(file, input, output);
    broker.handle_ioctl(request, code, input, output);
    request
}

fn status_of(request: WDFREQUEST) -> Option<NTSTATUS> {
    completion_of(request).map(|(status, _, _)| status)
}

fn connect(broker: &AskBroker, file: usize) -> Option<NTSTATUS> {
    with_host(|host| host.current_process_id = HANDLER_PID);
    let input = ConnectRequest {
        version: ASK_PROTOCOL_VERSION,
        flags: 0,
    }
    .to_bytes();
    let request = ioctl(
        broker,
        file,
        IOCTL_ASK_CONNECT,
        &input,
        ConnectResponse::SIZE,
    );
    with_host(|host| host.current_process_id = 0);
    status_of(request)
}

fn get_request(broker: &AskBroker, file: usize) -> WDFREQUEST {
    ioctl(broker, file, IOCTL_ASK_GET_REQUEST, &[], AskRequest::SIZE)
}

fn reply(broker: &AskBroker, file: usize, id: u32, generation: u32, access: u32) -> NTSTATUS {
    let input = AskReply {
        id,
        generation,
        desired_access: access,
        result_code: 0x2000_0005,
    }
    .to_bytes();
    status_of(ioctl(broker, file, IOCTL_ASK_REPLY, &input, 0)).expect("replies complete at once")
}

/// Waits (bounded) until `get` has been completed; its request.
fn delivered(get: WDFREQUEST) -> AskRequest {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((status, information, output)) = completion_of(get) {
            assert_eq!(status, STATUS_SUCCESS);
            assert_eq!(information, AskRequest::SIZE as u64);
            return AskRequest::parse(&output).expect("a well-formed request");
        }
        assert!(Instant::now() < deadline, "no request delivered");
        thread::sleep(Duration::from_millis(1));
    }
}

fn until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "condition never held");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Asks on a new thread (its own fake kernel at PASSIVE_LEVEL).
fn ask_async(
    broker: &Arc<AskBroker>,
    target: u32,
    fallback_strip: u32,
    timeout_ms: u32,
) -> thread::JoinHandle<AskAnswer> {
    let broker = Arc::clone(broker);
    thread::spawn(move || {
        reset_host();
        let mut request = request_for(target);
        broker.ask(&mut request, DESIRED, &plan(fallback_strip), timeout_ms)
    })
}

#[test]
fn an_answer_is_anded_in_and_can_never_add_a_bit() {
    let broker = broker();
    assert_eq!(connect(&broker, HANDLER_FILE), Some(STATUS_SUCCESS));
    assert_eq!(broker.handler_pid(), HANDLER_PID);
    let get = get_request(&broker, HANDLER_FILE);
    assert_eq!(status_of(get), None, "pended: nothing to decide yet");
    let waiting = ask_async(&broker, 77, TERMINATE, 5000);
    let asked = delivered(get);
    assert_eq!(asked.process_id, 77);
    assert_eq!(asked.timeout_ms, 5000);
    // The handler asks for every bit there is, minus TERMINATE.
    assert_eq!(
        reply(
            &broker,
            HANDLER_FILE,
            asked.id,
            asked.generation,
            !TERMINATE
        ),
        STATUS_SUCCESS
    );
    let answer = waiting.join().expect("ask thread");
    assert_eq!(answer.outcome, AskOutcome::Answered);
    assert_eq!(
        answer.access,
        DESIRED & !TERMINATE,
        "ANDed: no bit beyond DESIRED"
    );
    assert_eq!(answer.result_code, 0x2000_0005);
    let status = broker.status();
    assert_eq!((status.counters.asked, status.counters.answered), (1, 1));
    assert_eq!(status.in_flight, 0);
}

#[test]
fn a_timeout_gives_each_on_timeout_fallback() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    // on_timeout = "strip": the rule's strip set goes.
    let strip = ask_async(&broker, 1, TERMINATE, 20).join().expect("ask");
    assert_eq!(strip.outcome, AskOutcome::TimedOut);
    assert_eq!(strip.access, DESIRED & !TERMINATE);
    // on_timeout = "allow": the request as the enforce rules left it.
    let allow = ask_async(&broker, 1, 0, 20).join().expect("ask");
    assert_eq!(allow.outcome, AskOutcome::TimedOut);
    assert_eq!(allow.access, DESIRED);
    let status = broker.status();
    assert_eq!(status.counters.timed_out, 2);
    assert_eq!(status.in_flight, 0, "timed-out slots are free again");
}

#[test]
fn without_a_handler_the_fallback_applies_at_once() {
    let broker = broker();
    let mut request = request_for(1);
    let answer = broker.ask(&mut request, DESIRED, &plan(TERMINATE), 5000);
    assert_eq!(answer.outcome, AskOutcome::NoHandler);
    assert_eq!(answer.access, DESIRED & !TERMINATE);
    assert_eq!(with_host(|host| host.waits), 0, "no wait");
    assert_eq!(broker.status().counters.no_handler, 1);
}

#[test]
fn unaskable_requests_apc_level_and_disabled_apcs_get_the_fallback_without_waiting() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let mut request = request_for(1);
    let mut unaskable = plan(TERMINATE);
    unaskable.askable = false;
    let answers = [
        broker.ask(&mut request, DESIRED, &unaskable, 5000),
        {
            with_host(|host| host.irql = 1);
            let answer = broker.ask(&mut request, DESIRED, &plan(TERMINATE), 5000);
            with_host(|host| host.irql = 0);
            answer
        },
        {
            with_host(|host| host.all_apcs_disabled = true);
            broker.ask(&mut request, DESIRED, &plan(TERMINATE), 5000)
        },
    ];
    for answer in answers {
        assert_eq!(answer.outcome, AskOutcome::Unaskable);
        assert_eq!(answer.access, DESIRED & !TERMINATE);
    }
    assert_eq!(with_host(|host| host.waits), 0);
    assert_eq!(broker.status().counters.unaskable, 3);
}

#[test]
fn the_handlers_own_requests_are_not_asked_and_keep_their_access() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let mut request = request_for(1);
    request.requester_pid = HANDLER_PID;
    let answer = broker.ask(&mut request, DESIRED, &plan(TERMINATE), 5000);
    assert_eq!(answer.access, DESIRED, "no fallback either");
    assert_eq!(broker.status().counters.asked, 0);
}

#[test]
fn a_full_pool_gives_the_fallback_at_once_and_a_disconnect_releases_every_waiter() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let waiters: Vec<_> = (0..SLOTS)
        .map(|index| ask_async(&broker, index as u32, TERMINATE, 5000))
        .collect();
    until(|| broker.status().in_flight == SLOTS as u32);
    let mut request = request_for(1);
    let full = broker.ask(&mut request, DESIRED, &plan(TERMINATE), 5000);
    assert_eq!(full.outcome, AskOutcome::PoolFull);
    assert_eq!(full.access, DESIRED & !TERMINATE);
    let started = Instant::now();
    let disconnect = ioctl(&broker, HANDLER_FILE, IOCTL_ASK_DISCONNECT, &[], 0);
    assert_eq!(status_of(disconnect), Some(STATUS_SUCCESS));
    for waiter in waiters {
        let answer = waiter.join().expect("ask thread");
        assert_eq!(answer.outcome, AskOutcome::Cancelled);
        assert_eq!(answer.access, DESIRED & !TERMINATE);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "released at once, not timed out"
    );
    let status = broker.status();
    assert_eq!(status.counters.pool_full, 1);
    assert_eq!(status.counters.cancelled, SLOTS as u64);
    assert_eq!((status.handler_pid, broker.handler_pid()), (0, 0));
    let mut after = request_for(1);
    assert_eq!(
        broker.ask(&mut after, DESIRED, &plan(0), 5000).outcome,
        AskOutcome::NoHandler
    );
}

#[test]
fn a_late_reply_is_refused_and_counted() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let get = get_request(&broker, HANDLER_FILE);
    let waiting = ask_async(&broker, 9, TERMINATE, 20);
    let asked = delivered(get);
    assert_eq!(waiting.join().expect("ask").outcome, AskOutcome::TimedOut);
    assert_eq!(
        reply(&broker, HANDLER_FILE, asked.id, asked.generation, 0),
        STATUS_NOT_FOUND
    );
    assert_eq!(broker.status().counters.late_replies, 1);
}

#[test]
fn malformed_unknown_and_wrong_generation_replies_are_refused_while_the_right_one_counts() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let get = get_request(&broker, HANDLER_FILE);
    let waiting = ask_async(&broker, 9, TERMINATE, 5000);
    let asked = delivered(get);
    let short = ioctl(&broker, HANDLER_FILE, IOCTL_ASK_REPLY, &[0; 15], 0);
    assert_eq!(status_of(short), Some(STATUS_INVALID_PARAMETER));
    assert_eq!(
        broker.status().counters.late_replies,
        0,
        "malformed counts nothing"
    );
    assert_eq!(
        reply(&broker, HANDLER_FILE, 64, asked.generation, 0),
        STATUS_NOT_FOUND
    );
    assert_eq!(
        reply(
            &broker,
            HANDLER_FILE,
            asked.id,
            asked.generation.wrapping_add(1),
            0
        ),
        STATUS_NOT_FOUND
    );
    assert_eq!(broker.status().counters.late_replies, 2);
    assert_eq!(
        reply(&broker, HANDLER_FILE, asked.id, asked.generation, DESIRED),
        STATUS_SUCCESS
    );
    let answer = waiting.join().expect("ask");
    assert_eq!(
        (answer.outcome, answer.access),
        (AskOutcome::Answered, DESIRED)
    );
}

#[test]
fn waiting_requests_reach_workers_oldest_first() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let first = ask_async(&broker, 1, TERMINATE, 5000);
    until(|| broker.status().in_flight == 1);
    let second = ask_async(&broker, 2, TERMINATE, 5000);
    until(|| broker.status().in_flight == 2);
    // Workers arriving later get the waiting requests at once, in order.
    let a = delivered(get_request(&broker, HANDLER_FILE));
    let b = delivered(get_request(&broker, HANDLER_FILE));
    assert_eq!((a.process_id, b.process_id), (1, 2));
    reply(&broker, HANDLER_FILE, b.id, b.generation, DESIRED);
    reply(&broker, HANDLER_FILE, a.id, a.generation, 0);
    assert_eq!(first.join().expect("ask").access, 0);
    assert_eq!(second.join().expect("ask").access, DESIRED);
}

#[test]
fn a_cancelled_worker_is_skipped_and_the_request_waits_for_the_next() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let cancelled = get_request(&broker, HANDLER_FILE);
    assert!(
        cancel_queued(cancelled),
        "the framework cancels it (CancelIoEx)"
    );
    assert_eq!(broker.status().workers_waiting, 0);
    let waiting = ask_async(&broker, 3, TERMINATE, 5000);
    until(|| broker.status().in_flight == 1);
    let asked = delivered(get_request(&broker, HANDLER_FILE));
    reply(&broker, HANDLER_FILE, asked.id, asked.generation, DESIRED);
    assert_eq!(waiting.join().expect("ask").outcome, AskOutcome::Answered);
}

#[test]
fn one_handler_at_a_time_and_ask_ioctls_only_on_its_handle() {
    let broker = broker();
    assert_eq!(connect(&broker, HANDLER_FILE), Some(STATUS_SUCCESS));
    assert_eq!(
        connect(&broker, HANDLER_FILE + 1),
        Some(STATUS_SHARING_VIOLATION)
    );
    let foreign = get_request(&broker, HANDLER_FILE + 1);
    assert_eq!(status_of(foreign), Some(STATUS_INVALID_DEVICE_STATE));
    let short = ioctl(
        &broker,
        HANDLER_FILE,
        IOCTL_ASK_GET_REQUEST,
        &[],
        AskRequest::SIZE - 1,
    );
    assert_eq!(status_of(short), Some(STATUS_BUFFER_TOO_SMALL));
    assert_eq!(
        reply(&broker, HANDLER_FILE + 1, 0, 1, 0),
        STATUS_INVALID_DEVICE_STATE
    );
    let foreign_disconnect = ioctl(&broker, HANDLER_FILE + 1, IOCTL_ASK_DISCONNECT, &[], 0);
    assert_eq!(
        status_of(foreign_disconnect),
        Some(STATUS_INVALID_DEVICE_STATE)
    );
    assert_eq!(broker.handler_pid(), HANDLER_PID, "still connected");
    let bad_version = ioctl(
        &broker,
        HANDLER_FILE,
        IOCTL_ASK_CONNECT,
        &[2, 0, 0, 0, 0, 0, 0, 0],
        16,
    );
    assert_eq!(status_of(bad_version), Some(STATUS_INVALID_PARAMETER));
}

#[test]
fn closing_the_handlers_handle_disconnects_and_cancels_its_workers() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let worker = get_request(&broker, HANDLER_FILE);
    let waiting = ask_async(&broker, 4, 0, 5000);
    let asked = delivered(worker);
    let idle = get_request(&broker, HANDLER_FILE);
    broker.file_cleanup(HANDLER_FILE as WDFFILEOBJECT);
    assert_eq!(status_of(idle), Some(STATUS_CANCELLED));
    let answer = waiting.join().expect("ask");
    assert_eq!(
        (answer.outcome, answer.access),
        (AskOutcome::Cancelled, DESIRED)
    );
    assert_eq!(broker.handler_pid(), 0);
    // Its reply after the disconnect matches nothing.
    assert_eq!(
        reply(&broker, HANDLER_FILE, asked.id, asked.generation, 0),
        STATUS_INVALID_DEVICE_STATE
    );
    // A new handler can connect.
    assert_eq!(connect(&broker, HANDLER_FILE + 2), Some(STATUS_SUCCESS));
}

#[test]
fn shutdown_releases_waiters_cancels_workers_and_refuses_new_asks_and_connections() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let waiting = ask_async(&broker, 5, TERMINATE, 5000);
    until(|| broker.status().in_flight == 1);
    broker.shutdown();
    let answer = waiting.join().expect("ask");
    assert_eq!(answer.outcome, AskOutcome::Cancelled);
    assert_eq!(answer.access, DESIRED & !TERMINATE);
    let mut request = request_for(1);
    assert_eq!(
        broker
            .ask(&mut request, DESIRED, &plan(TERMINATE), 5000)
            .outcome,
        AskOutcome::NoHandler
    );
    assert_eq!(
        connect(&broker, HANDLER_FILE),
        Some(STATUS_INVALID_DEVICE_STATE)
    );
}

#[test]
fn shutdown_completes_pended_workers_with_cancelled() {
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let workers: Vec<_> = (0..3).map(|_| get_request(&broker, HANDLER_FILE)).collect();
    assert_eq!(broker.status().workers_waiting, 3);
    broker.shutdown();
    for worker in workers {
        assert_eq!(status_of(worker), Some(STATUS_CANCELLED));
    }
}

#[test]
fn the_connect_response_reports_the_pool_timeout_and_pid() {
    let broker = broker();
    broker.set_timeout_ms(300);
    with_host(|host| host.current_process_id = HANDLER_PID);
    let input = ConnectRequest {
        version: ASK_PROTOCOL_VERSION,
        flags: 0,
    }
    .to_bytes();
    let request = ioctl(&broker, HANDLER_FILE, IOCTL_ASK_CONNECT, &input, 16);
    let (status, information, output) = completion_of(request).expect("done");
    assert_eq!((status, information), (STATUS_SUCCESS, 16));
    let response = ConnectResponse::parse(&output).expect("16 bytes");
    assert_eq!(
        (response.slots, response.timeout_ms, response.handler_pid),
        (64, 300, HANDLER_PID)
    );
}

/// Replies racing timeouts: whatever the interleaving, each ask ends once,
/// with the answer or the fallback, and every slot comes back free.
#[test]
fn replies_racing_timeouts_always_leave_a_consistent_pool() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let broker = broker();
    connect(&broker, HANDLER_FILE);
    let done = Arc::new(AtomicBool::new(false));
    let handler = {
        let broker = Arc::clone(&broker);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            reset_host();
            let (mut accepted, mut refused) = (0u64, 0u64);
            let mut get = get_request(&broker, HANDLER_FILE);
            while !done.load(Ordering::SeqCst) {
                let Some((_, _, output)) = completion_of(get) else {
                    thread::yield_now();
                    continue;
                };
                let asked = AskRequest::parse(&output).expect("request");
                get = get_request(&broker, HANDLER_FILE);
                // Sometimes right at the deadline.
                thread::sleep(Duration::from_micros(u64::from(asked.process_id % 4) * 700));
                if reply(
                    &broker,
                    HANDLER_FILE,
                    asked.id,
                    asked.generation,
                    !TERMINATE,
                ) == STATUS_SUCCESS
                {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
            (accepted, refused)
        })
    };
    let mut answered = 0u64;
    for round in 0..60 {
        let answer = ask_async(&broker, round, 0, 2).join().expect("ask");
        match answer.outcome {
            AskOutcome::Answered => {
                assert_eq!(answer.access, DESIRED & !TERMINATE);
                answered += 1;
            }
            AskOutcome::TimedOut => assert_eq!(answer.access, DESIRED),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // Let the last reply land, then stop the handler.
    thread::sleep(Duration::from_millis(20));
    done.store(true, Ordering::SeqCst);
    let (accepted, refused) = handler.join().expect("handler");
    let status = broker.status();
    assert_eq!(status.in_flight, 0);
    assert_eq!(
        accepted, answered,
        "a reply is accepted exactly when its answer is used"
    );
    assert_eq!(status.counters.late_replies, refused);
    assert_eq!(status.counters.answered + status.counters.timed_out, 60);
}

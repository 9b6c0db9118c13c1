//! Arbitrary client and server streams into the HTTP/1.1 parser, cut into arbitrary
//! pieces: no panic, the events do not depend on how each direction was cut (for the same
//! interleaving of the two directions), and `client_bytes_framed()` never decreases nor
//! passes the client bytes fed.
//!
//! Input: a flags byte (bit 0: small limits; bit 1: feed the client stream whole, then the
//! server's, instead of interleaving them; bit 2: the server closes first), a seed byte for
//! the cuts, two bytes naming the split point, then the client stream and the server
//! stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
mod inspect;

use common::{interleave, pieces, split_streams, Prng, Side};
use inspect::http1::{Direction, Http1Connection, Http1Event, Http1Limits};

/// Feeds the schedule, each segment whole (`prng` None) or cut in pieces, then both
/// closes; checks the per-call invariants and returns every event.
fn feed(
    limits: Http1Limits,
    schedule: &[(Side, &[u8])],
    server_first: bool,
    mut prng: Option<Prng>,
) -> Vec<Http1Event> {
    let mut connection = Http1Connection::new(limits);
    let mut events = Vec::new();
    let mut client_fed = 0u64;
    let mut server_fed = 0u64;
    let mut framed = 0u64;
    for &(side, segment) in schedule {
        let cut = match &mut prng {
            Some(prng) => pieces(segment, prng),
            None => vec![segment],
        };
        for piece in cut {
            let new = match side {
                Side::Client => {
                    client_fed += piece.len() as u64;
                    connection.client_bytes(piece)
                }
                Side::Server => {
                    server_fed += piece.len() as u64;
                    connection.server_bytes(piece)
                }
            };
            check_call(&connection, &new, &mut framed, client_fed, server_fed);
            events.extend(new);
        }
    }
    for close_server in [server_first, !server_first] {
        let new = if close_server {
            connection.server_closed()
        } else {
            connection.client_closed()
        };
        check_call(&connection, &new, &mut framed, client_fed, server_fed);
        events.extend(new);
    }
    // Nothing follows an event that ends inspection.
    if let Some(last) = events.iter().position(|event| {
        matches!(
            event,
            Http1Event::Tunnel { .. } | Http1Event::ProtocolError(_) | Http1Event::Refused(_)
        )
    }) {
        assert_eq!(last, events.len() - 1, "events after the end of inspection: {events:?}");
    }
    events
}

/// The invariants after one call: `framed` is what `client_bytes_framed()` said last.
fn check_call(connection: &Http1Connection, new: &[Http1Event], framed: &mut u64, client_fed: u64, server_fed: u64) {
    let now = connection.client_bytes_framed();
    assert!(now >= *framed, "client_bytes_framed went back from {framed} to {now}");
    assert!(now <= client_fed, "client_bytes_framed {now} > {client_fed} bytes fed");
    *framed = now;
    for event in new {
        check_event(event, client_fed, server_fed);
    }
}

fn check_event(event: &Http1Event, client_fed: u64, server_fed: u64) {
    match event {
        Http1Event::RequestHead {
            head_start,
            head_end,
            request,
            ..
        } => {
            assert!(
                head_start < head_end && *head_end <= client_fed,
                "{event:?} with {client_fed} fed"
            );
            let _ = request.url();
        }
        Http1Event::RequestComplete { end, .. } => assert!(*end <= client_fed, "{event:?} with {client_fed} fed"),
        Http1Event::ProtocolError(error) | Http1Event::Refused(error) => {
            let _ = error.to_string();
            let fed = match error.direction {
                Direction::ClientToServer => client_fed,
                Direction::ServerToClient => server_fed,
            };
            assert!(error.offset <= fed, "{error:?} with {fed} fed");
            assert_eq!(
                matches!(event, Http1Event::Refused(_)),
                error.problem.is_framing_ambiguity()
            );
        }
        Http1Event::ResponseHead { .. } | Http1Event::TransactionComplete { .. } | Http1Event::Tunnel { .. } => {}
        // Reported only with `report_content`, which this target leaves off: its events
        // are compared whole against in pieces, and body spans follow the pieces.
        Http1Event::Head { .. } | Http1Event::BodyData { .. } => panic!("{event:?} without report_content"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, seed], data)) = data.split_first_chunk::<2>().map(|(head, rest)| (head, rest)) else {
        return;
    };
    let Some((client, server)) = split_streams(data) else {
        return;
    };
    let limits = if flags & 1 != 0 {
        Http1Limits {
            max_head_bytes: 200,
            max_pipelined: 3,
        }
    } else {
        Http1Limits::default()
    };
    let schedule = if flags & 2 != 0 {
        vec![(Side::Client, client), (Side::Server, server)]
    } else {
        interleave(client, server, &mut Prng::new(u64::from(seed) << 8 | 1))
    };
    let server_first = flags & 4 != 0;

    let whole = feed(limits, &schedule, server_first, None);
    let chunked = feed(limits, &schedule, server_first, Some(Prng::new(u64::from(seed))));
    assert_eq!(whole, chunked, "events differ whole and in pieces");
});

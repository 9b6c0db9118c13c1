//! Arbitrary bytes, in arbitrary chunkings, into the ClientHello reader: no panic, and
//! the verdict must not depend on how the stream was cut.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod tls;

use tls::client_hello::{ClientHello, ClientHelloError, ClientHelloReader};

type Outcome = Result<Option<ClientHello>, ClientHelloError>;

/// NotTls keeps the bytes in hand when it decides, which depends on the chunking.
fn verdict(outcome: Outcome) -> Outcome {
    match outcome {
        Err(ClientHelloError::NotTls { .. }) => Err(ClientHelloError::NotTls {
            prefix: match ClientHelloReader::new().push(b"x") {
                Err(ClientHelloError::NotTls { prefix }) => prefix,
                other => panic!("\"x\" must be NotTls, got {other:?}"),
            },
        }),
        other => other,
    }
}

/// Feeds `stream` cut into pieces whose sizes come from `seed`: single bytes, small
/// pieces and segment-sized ones.
fn read_chunked(reader: &mut ClientHelloReader, stream: &[u8], mut seed: u8) -> Outcome {
    let mut rest = stream;
    let mut found = None;
    while !rest.is_empty() {
        seed = seed.wrapping_mul(181).wrapping_add(59);
        let size = match seed % 4 {
            0 => 1,
            1 => 2 + usize::from(seed % 7),
            2 => 9 + usize::from(seed % 64),
            _ => 500 + 8 * usize::from(seed),
        };
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        match reader.push(piece) {
            Ok(Some(hello)) => found = found.or(Some(hello)),
            Ok(None) => {}
            Err(error) => {
                let _ = error.to_string();
                return Err(error);
            }
        }
    }
    Ok(found)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut whole_reader = ClientHelloReader::new();
    let whole = whole_reader.push(stream);
    if let Err(error) = &whole {
        let _ = error.to_string();
    }
    if let Ok(Some(hello)) = &whole {
        let _ = (hello.max_version(), hello.offers_tls13());
    }

    let mut chunked_reader = ClientHelloReader::new();
    let chunked = read_chunked(&mut chunked_reader, stream, seed);
    if stream.len() <= whole_reader.raw_limit() {
        assert_eq!(verdict(whole.clone()), verdict(chunked.clone()));
        // Every byte is kept, however it came.
        assert_eq!(whole_reader.raw(), stream);
        if chunked.is_ok() {
            assert_eq!(chunked_reader.raw(), stream);
        }
    }

    // A tight bound must hold as well.
    let mut small = ClientHelloReader::with_limit(usize::from(seed));
    let _ = read_chunked(&mut small, stream, seed.rotate_left(3));
    assert!(small.raw().len() <= small.raw_limit());
});

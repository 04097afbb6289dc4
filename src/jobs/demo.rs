//! The built-in demo worker's text: deterministic (the same input gives
//! the same tokens), so tests can check every token arrived once and in
//! order, and plainly marked as a demo.

use super::Kind;

/// What the demo worker says after echoing the input: one of these,
/// picked by the input.
const SENTENCES: [&str; 3] = [
    "redix accepted this job at once, queued it, and a worker streamed each token as an event on the job's channel, so nothing waited on a thread.",
    "this text comes from the built-in demo worker; in Redis mode your own workers read the job stream and publish tokens the same way.",
    "every token is an event with an id, so a client that reconnects resumes where it left off and the result is cached for the next asker.",
];

/// The tokens of a job's answer, in order; joined they are the result.
pub fn tokens(kind: Kind, input: &str) -> Vec<String> {
    let seed = input.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let lead = match kind {
        Kind::Summarize => "Demo summary of",
        Kind::Ask => "Demo answer to",
    };
    // The input cut to 40 characters, so a long URL or question does not
    // make a long job.
    let shown: String = input.chars().take(40).collect();
    let sentence = SENTENCES[(seed % SENTENCES.len() as u64) as usize];
    let text = format!("{lead} {shown:?}: {sentence}");
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        word.push(c);
        if c == ' ' {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// The demo worker cannot fetch a URL on a `.invalid` host (a name that
/// never resolves, RFC 2606): such a job fails with `fetch_failed`, so the
/// error path can be seen without a real worker.
pub fn unreachable(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#', ':']).next().unwrap_or("");
    host.ends_with(".invalid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_input_gives_the_same_tokens() {
        let a = tokens(Kind::Ask, "hello");
        assert_eq!(a, tokens(Kind::Ask, "hello"));
        assert!(a.len() >= 16 && a.len() < 40, "{a:?}");
        assert!(a.concat().starts_with("Demo answer to \"hello\": "));
        assert!(a.concat().ends_with('.'));
        assert!(
            unreachable("https://down.invalid/x") && !unreachable("https://example.com/a.invalid")
        );
        let long = tokens(Kind::Summarize, &"x".repeat(2000));
        assert!(long.concat().len() < 300);
    }
}

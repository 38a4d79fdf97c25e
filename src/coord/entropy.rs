//! The protocol's randomness (backoff jitter, fresh object keys) in one
//! place, so a deterministic simulation can draw all of it from its seed:
//! with the `test-util` feature, [`seed_this_thread`] makes every draw on
//! the calling thread come from a seeded generator. Otherwise draws come
//! from the thread-local OS-seeded generator. The workspace's
//! `clippy.toml` bans the other ways to draw from the OS (`rand::rng`,
//! `rand::random`, `from_os_rng`, ...) outside this seam.

#[cfg(feature = "test-util")]
thread_local! {
    static SEEDED: std::cell::RefCell<Option<rand::rngs::StdRng>> =
        const { std::cell::RefCell::new(None) };
}

/// A random `u64`.
// The entropy seam itself: the one draw from the OS-seeded generator.
#[allow(clippy::disallowed_methods)]
pub(crate) fn random_u64() -> u64 {
    #[cfg(feature = "test-util")]
    {
        let seeded = SEEDED.with(|s| s.borrow_mut().as_mut().map(rand::RngCore::next_u64));
        if let Some(v) = seeded {
            return v;
        }
    }
    rand::random()
}

/// Draws on this thread come from `seed` from now on (`None`: the OS
/// again). For single-threaded deterministic simulations.
#[cfg(feature = "test-util")]
pub fn seed_this_thread(seed: Option<u64>) {
    use rand::SeedableRng;
    SEEDED.with(|s| *s.borrow_mut() = seed.map(rand::rngs::StdRng::seed_from_u64));
}

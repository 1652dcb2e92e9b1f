import DSWire

/// How many connections a listener lets wait before they are authenticated, and for how long.
package struct AdmissionLimits: Sendable, Equatable {
    /// Connections waiting for authentication and their preamble at once, from all peers.
    package var maxPending: Int
    /// Of those, from one peer address (IP, any port): a whole session's channels and some more.
    package var maxPerAddress: Int
    /// One deadline per connection, from its accept to its preamble (and token): the TLS
    /// handshake and the preamble together, however the peer paces its bytes.
    package var deadline: Duration

    /// The limits for a session whose stall timeout is `timeout`: 128 waiting connections, 80
    /// from one address (64 channels and 16 more), and `min(timeout, 10 s)` for each to be
    /// authenticated and send its preamble.
    package static func standard(timeout: Duration) -> AdmissionLimits {
        AdmissionLimits(maxPending: 128, maxPerAddress: Int(WireLimits.maxChannels) + 16,
                        deadline: min(timeout, .seconds(10)))
    }

    package init(maxPending: Int, maxPerAddress: Int, deadline: Duration) {
        self.maxPending = maxPending
        self.maxPerAddress = maxPerAddress
        self.deadline = deadline
    }
}

/// Who may wait for admission: the listener's policy as a state machine, fed the time and the
/// connections' progress and returning what to do; no sockets, no threads, no clock of its own.
///
/// A connection is *waiting* from its accept until it joins the session or is turned away; it
/// is *authenticated* once its TLS handshake has proved the key or certificate (a plaintext
/// connection never is). When a new connection would pass a limit, the oldest unauthenticated
/// waiting connection is shed to make room — from the new connection's own address when that
/// address is at its limit, else from the address that holds the most — so that idle or
/// trickling connections cannot keep out a peer that holds the key: the newcomer is the
/// youngest, and is shed only after every older unauthenticated one. Only when every waiting
/// connection in the way is authenticated is the newcomer refused. Every waiting connection has
/// one deadline; past it, it is expired.
package struct AdmissionPolicy: Sendable {
    package struct Waiting: Sendable, Equatable {
        package var address: String
        package var admittedAt: Duration
        package var deadline: Duration
        package var authenticated = false
    }

    /// What to do with a new connection.
    package enum Decision: Sendable, Equatable {
        /// Let it wait (after shedding these ids, oldest first).
        case admit(shedding: [Int])
        /// Turn it away: every waiting connection in its way is authenticated.
        case refuse(String)
    }

    package let limits: AdmissionLimits
    package private(set) var waiting: [Int: Waiting] = [:]

    package init(limits: AdmissionLimits) { self.limits = limits }

    package var count: Int { waiting.count }

    /// Waiting connections that have authenticated (admission never sheds these for a newcomer).
    package var authenticatedCount: Int { waiting.values.reduce(0) { $0 + ($1.authenticated ? 1 : 0) } }

    /// Waiting connections from `address`.
    package func count(from address: String) -> Int { waiting.values.reduce(0) { $0 + ($1.address == address ? 1 : 0) } }

    /// A new connection `id` from `address` at `now`.
    package mutating func admit(_ id: Int, from address: String, now: Duration) -> Decision {
        var shed: [Int] = []
        if count(from: address) >= limits.maxPerAddress {
            guard let victim = oldestUnauthenticated(from: address) else {
                return .refuse("\(limits.maxPerAddress) authenticated connections from \(address) are already waiting for their preamble")
            }
            shed.append(victim)
            waiting[victim] = nil
        }
        if waiting.count >= limits.maxPending {
            // From the address that holds the most unauthenticated connections (then the oldest
            // of them), so that one peer's flood sheds its own connections before another's.
            let candidates = waiting.filter { !$0.value.authenticated }
            var counts: [String: Int] = [:]
            for w in candidates.values { counts[w.address, default: 0] += 1 }
            guard let victim = candidates.min(by: { a, b in
                let ca = counts[a.value.address] ?? 0, cb = counts[b.value.address] ?? 0
                if ca != cb { return ca > cb }
                return (a.value.admittedAt, a.key) < (b.value.admittedAt, b.key)
            })?.key else {
                return .refuse("\(limits.maxPending) authenticated connections are already waiting for their preamble")
            }
            shed.append(victim)
            waiting[victim] = nil
        }
        waiting[id] = Waiting(address: address, admittedAt: now, deadline: now + limits.deadline)
        return .admit(shedding: shed)
    }

    /// `id` proved the key (or certificate): it is never shed for room now, though its deadline
    /// still holds.
    package mutating func authenticated(_ id: Int) { waiting[id]?.authenticated = true }

    /// `id` no longer waits (it joined, or was turned away, or closed).
    package mutating func remove(_ id: Int) { waiting[id] = nil }

    /// The waiting connections whose deadline has passed at `now`, oldest first; they are removed.
    package mutating func expire(now: Duration) -> [Int] {
        let late = waiting.filter { $0.value.deadline <= now }.sorted { $0.value.admittedAt < $1.value.admittedAt }.map(\.key)
        for id in late { waiting[id] = nil }
        return late
    }

    /// The earliest deadline among the waiting connections.
    package var nextDeadline: Duration? { waiting.values.map(\.deadline).min() }

    private func oldestUnauthenticated(from address: String) -> Int? {
        waiting.filter { $0.value.address == address && !$0.value.authenticated }
            .min { ($0.value.admittedAt, $0.key) < ($1.value.admittedAt, $1.key) }?.key
    }
}

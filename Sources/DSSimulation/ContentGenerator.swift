/// Seeded, deterministic content for simulated device state.
///
/// Every 8-byte word of an image is a pure function of `(profile, seed, word index)` (text is a pure
/// function of its 64-byte line), so `fill` writes the same bytes for the same image offset however
/// the image is split into buffers: a benchmark can generate a 1 GiB image chunk by chunk and get
/// exactly what `SimulatedDevice` holds. Words are stored in the machine's byte order (little-endian
/// on every platform DeviceStream runs on).
///
/// The `mixed` profile imitates device memory: each 64 KiB region is, by a seeded draw, one of
/// zero pages (30%), a descriptor ring of 16-byte records (12%), a descriptor ring of 32-byte
/// records (13%), a float32 tensor of smooth values (25%) or random bytes (20%).

#if canImport(Glibc)
import Glibc
#endif

/// What a generated image looks like.
public enum ContentProfile: String, Sendable, CaseIterable {
    /// Looks like device memory: zero pages, descriptor rings, float32 tensors and random bytes.
    case mixed
    /// All zero bytes.
    case zero
    /// Uniformly random bytes (incompressible).
    case random
    /// English-like words in 64-byte lines.
    case text
}

/// Fills buffers with deterministic content; see the file comment.
public enum ContentGenerator {
    /// The granularity of the `mixed` profile's choice of region kind.
    public static let regionSize: UInt64 = 64 * 1024
    static let wordsPerRegion: UInt64 = regionSize / 8

    enum RegionKind { case zero, ring16, ring32, tensor, random, text }

    /// Fills `buffer` with the bytes at `offset ..< offset + buffer.count` of the image
    /// `(profile, seed)`. The buffer needs no alignment.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer, profile: ContentProfile, seed: UInt64, offset: UInt64) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        let count = buffer.count
        var pos = 0
        let head = Int(offset % 8)
        if head != 0 {
            let n = min(8 - head, count)
            copyPartialWord(to: base, wordIndex: offset / 8, skip: head, count: n, profile: profile, seed: seed)
            pos = n
        }
        let words = (count - pos) / 8
        if words > 0 {
            fillWords(base + pos, firstWord: (offset + UInt64(pos)) / 8, count: words, profile: profile, seed: seed)
            pos += words * 8
        }
        if pos < count {
            copyPartialWord(to: base + pos, wordIndex: (offset + UInt64(pos)) / 8, skip: 0, count: count - pos,
                            profile: profile, seed: seed)
        }
    }

    /// Returns `count` bytes of the image at `offset` (convenience for tests and small reads).
    public static func bytes(count: Int, profile: ContentProfile, seed: UInt64, offset: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { fill($0, profile: profile, seed: seed, offset: offset) }
        return out
    }

    private static func copyPartialWord(to dst: UnsafeMutableRawPointer, wordIndex: UInt64, skip: Int, count: Int,
                                        profile: ContentProfile, seed: UInt64) {
        var word: UInt64 = 0
        withUnsafeMutableBytes(of: &word) { fillWords($0.baseAddress!, firstWord: wordIndex, count: 1, profile: profile, seed: seed) }
        withUnsafeBytes(of: word) { dst.copyMemory(from: $0.baseAddress! + skip, byteCount: count) }
    }

    /// splitmix64's finaliser: a fast, well-mixed hash of one word.
    @inline(__always) static func mix(_ z0: UInt64) -> UInt64 {
        var z = z0 &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    static func regionKind(_ profile: ContentProfile, seed: UInt64, region: UInt64) -> RegionKind {
        switch profile {
        case .zero: return .zero
        case .random: return .random
        case .text: return .text
        case .mixed:
            let d = mix(mix(seed ^ 0x5EED_0001) ^ region) % 100
            if d < 30 { return .zero }
            if d < 42 { return .ring16 }
            if d < 55 { return .ring32 }
            if d < 80 { return .tensor }
            return .random
        }
    }

    /// Writes `count` whole words starting at image word `firstWord`.
    static func fillWords(_ dst: UnsafeMutableRawPointer, firstWord: UInt64, count: Int, profile: ContentProfile, seed: UInt64) {
        var w = firstWord
        var out = 0
        let randomKey = mix(seed ^ 0x5EED_0002)
        while out < count {
            let region = w / wordsPerRegion
            let regionEnd = (region + 1) * wordsPerRegion
            let n = min(count - out, Int(regionEnd - w))
            let p = dst + out * 8
            let k0 = w - region * wordsPerRegion  // word index inside the region
            let rh = mix(mix(seed ^ 0x5EED_0003) ^ region)
            switch regionKind(profile, seed: seed, region: region) {
            case .zero:
                memset(p, 0, n * 8)
            case .random:
                for i in 0 ..< n {
                    p.storeBytes(of: mix(randomKey ^ (w &+ UInt64(i))), toByteOffset: i * 8, as: UInt64.self)
                }
            case .ring16:
                // 16-byte records: buffer address, then index | length << 16 | flags << 32.
                let baseAddr = (rh & 0x0000_00FF_FFFF_F000) | 0x1_0000_0000
                let flags = (rh >> 48) | 0x8000
                for i in 0 ..< n {
                    let k = k0 + UInt64(i)
                    let j = k / 2
                    let v: UInt64 = (k & 1) == 0 ? baseAddr &+ j &* 2048 : (j & 0xFFFF) | (2048 << 16) | (flags << 32)
                    p.storeBytes(of: v, toByteOffset: i * 8, as: UInt64.self)
                }
            case .ring32:
                // 32-byte records: address, index | length << 32, flags, cookie.
                let baseAddr = (rh & 0x0000_00FF_FFFF_F000) | 0x2_0000_0000
                let flags = 0x8000_0001 | ((rh >> 40) << 32)
                for i in 0 ..< n {
                    let k = k0 + UInt64(i)
                    let j = k / 4
                    let v: UInt64
                    switch k & 3 {
                    case 0: v = baseAddr &+ j &* 4096
                    case 1: v = (j & 0xFFFF_FFFF) | (4096 << 32)
                    case 2: v = flags
                    default: v = j &* 0x10
                    }
                    p.storeBytes(of: v, toByteOffset: i * 8, as: UInt64.self)
                }
            case .tensor:
                // Two float32 per word: a + b*x + c*x^2, x in [0, 1) across the region.
                let a = Float(Int64(rh & 0xFFFF) - 0x8000) / 4096
                let b = Float(Int64((rh >> 16) & 0xFFFF) - 0x8000) / 8192
                let c = Float(Int64((rh >> 32) & 0xFFFF) - 0x8000) / 16384
                let scale: Float = 1 / Float(wordsPerRegion * 2)
                for i in 0 ..< n {
                    let f = Float((k0 + UInt64(i)) * 2)
                    let x0 = f * scale, x1 = (f + 1) * scale
                    let v0 = a + b * x0 + c * x0 * x0
                    let v1 = a + b * x1 + c * x1 * x1
                    let v = UInt64(v0.bitPattern) | (UInt64(v1.bitPattern) << 32)
                    p.storeBytes(of: v, toByteOffset: i * 8, as: UInt64.self)
                }
            case .text:
                fillText(p, firstWord: w, count: n, seed: seed)
            }
            w += UInt64(n)
            out += n
        }
    }

    private static let words: [String] = [
        "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
        "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you",
        "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will",
        "would", "who", "so", "no", "device", "memory", "state", "migration", "page", "queue", "buffer", "running",
        "copy", "stream", "driver", "host", "guest", "time", "data",
    ]

    /// The 64 words, each padded with spaces to 16 bytes, so a word is copied with two stores.
    private static let vocabTable: [UInt8] = {
        precondition(words.count == 64)
        var out: [UInt8] = []
        for w in words { let u = Array(w.utf8); out += u + [UInt8](repeating: 32, count: 16 - u.count) }
        return out
    }()
    private static let vocabLengths: [Int] = words.map { $0.utf8.count }

    /// Text is generated per 64-byte line (8 words), each line a pure function of (seed, line
    /// index): words drawn 10 bits at a time (6 for the word, 4 for a 1-in-16 full stop), spaces to
    /// byte 63, then a newline.
    private static func fillText(_ dst: UnsafeMutableRawPointer, firstWord: UInt64, count: Int, seed: UInt64) {
        let key = mix(seed ^ 0x5EED_0004)
        vocabTable.withUnsafeBytes { table in
            vocabLengths.withUnsafeBufferPointer { lengths in
                withUnsafeTemporaryAllocation(byteCount: 96, alignment: 16) { line in
                    let vocab = table.baseAddress!
                    let l = line.baseAddress!
                    var w = firstWord
                    var out = 0
                    while out < count {
                        let lineIndex = w / 8
                        var r = mix(key ^ lineIndex)
                        var bits = 64
                        var pos = 0
                        while true {
                            if bits < 10 { r = mix(r); bits = 64 }
                            let idx = Int(r & 63)
                            let stop = (r >> 6) & 15 == 0
                            r >>= 10
                            bits -= 10
                            let len = lengths[idx]
                            if pos + len + 2 > 63 { break }
                            l.storeBytes(of: vocab.loadUnaligned(fromByteOffset: idx * 16, as: UInt64.self), toByteOffset: pos, as: UInt64.self)
                            l.storeBytes(of: vocab.loadUnaligned(fromByteOffset: idx * 16 + 8, as: UInt64.self), toByteOffset: pos + 8, as: UInt64.self)
                            pos += len
                            l.storeBytes(of: stop ? UInt8(ascii: ".") : UInt8(ascii: " "), toByteOffset: pos, as: UInt8.self)
                            pos += 1
                        }
                        while pos < 63 { l.storeBytes(of: UInt8(ascii: " "), toByteOffset: pos, as: UInt8.self); pos += 1 }
                        l.storeBytes(of: UInt8(ascii: "\n"), toByteOffset: 63, as: UInt8.self)
                        // Copy the words of this line that fall in the requested range.
                        let first = Int(w % 8)
                        let n = min(8 - first, count - out)
                        (dst + out * 8).copyMemory(from: l + first * 8, byteCount: n * 8)
                        w += UInt64(n)
                        out += n
                    }
                }
            }
        }
    }
}

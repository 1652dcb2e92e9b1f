// Every control-message decoder in DSWire (Payloads.swift, MigrationMessages.swift) and
// `PayloadReader` itself, and the other direction: whatever the encoders write, the decoders read.
//
// Input: [selector u8][channels u8][bytes ...]
//   selector % 16 =  0 ... 10  decode `bytes` as that ControlPayload (DeviceTotals in a session of
//                              `channels % 64 + 1` channels), re-encode, decode again;
//                   11         run PayloadReader over `bytes` as a little program (see `readerScript`);
//                   12         ErrorMessage(code, text) encoded by the sender, decoded by the peer;
//                   13         DeviceHeader(kind, size, flags, spec) likewise;
//                   14         DeviceTotals / DeviceDigests / MigrationSummary with counts from the input;
//                   15         SetupAccept, LoadStats, Loaded, Resumed from raw doubles.
import DSWire
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPayloads(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let selector = input.u8() % 16
    let channels = Int(input.u8() % 64) + 1
    switch selector {
    case 0...10:
        decodeControl(ControlPayload(rawValue: selector)!, input.restArray(), channels: channels)
    case 11:
        readerScript(&input)
    case 12:
        let code = input.integer(UInt16.self)
        let text = String(decoding: input.rest(), as: UTF8.self)
        let sent = ErrorMessage(code: code, message: text)
        expectDecodes("ErrorMessage", sent.encoded()) { b throws(WireError) in
            let got = try ErrorMessage.decode(b)
            require(got.code == code, "ErrorMessage code")
            require(isEscapedPeerText(got.message), "ErrorMessage text not escaped")
        }
    case 13:
        let kind = DeviceKind(rawValue: input.u8() & 1)!
        let size = input.integer(UInt64.self) >> 1  // a device size: at most Int64.max
        let flags = input.integer(UInt64.self)
        let spec = String(decoding: input.rest(), as: UTF8.self)
        let sent = DeviceHeader(kind: kind, size: size, flags: flags, spec: spec)
        expectDecodes("DeviceHeader", sent.encoded()) { b throws(WireError) in
            let got = try DeviceHeader.decode(b)
            require(got.kind == kind && got.size == size && got.flags == flags, "DeviceHeader fields")
            require(isEscapedPeerText(got.spec), "DeviceHeader spec not escaped")
        }
    case 14:
        let bytes = input.integer(UInt64.self)
        let devices = Int(input.u8()) + 1  // 1 ... 256 = WireLimits.maxDevices
        let hasDigest = input.u8()
        var counts: [UInt64] = []
        for _ in 0..<channels { counts.append(input.integer(UInt64.self)) }
        var digests: [UInt64?] = []
        for i in 0..<devices { digests.append(hasDigest & (1 << (i % 8)) == 0 ? nil : input.integer(UInt64.self)) }
        let totals = DeviceTotals(chunksPerChannel: counts, bytes: bytes, digest: digests[0])
        expectDecodes("DeviceTotals", totals.encoded()) { b throws(WireError) in
            let got = try DeviceTotals.decode(b, channels: channels)
            require(got == totals, "DeviceTotals round trip")
        }
        let list = DeviceDigests(digests)
        expectDecodes("DeviceDigests", list.encoded()) { b throws(WireError) in
            let got = try DeviceDigests.decode(b)
            require(got == list, "DeviceDigests round trip")
        }
        // Durations as the source measures them: whole microseconds, at most Int64.max of them.
        func micros() -> Duration { .microseconds(Int64(input.integer(UInt64.self) >> 1)) }
        let expected: Duration? = hasDigest & 1 == 0 ? nil : micros()
        let summary = MigrationSummary(downtime: micros(), expectedDowntime: expected, downtimeLimit: micros(),
                                       iterations: Int(input.integer(UInt32.self)), precopyBytes: input.integer(UInt64.self),
                                       stopcopyBytes: input.integer(UInt64.self), sourceDigests: digests)
        expectDecodes("MigrationSummary", summary.encoded()) { b throws(WireError) in
            let got = try MigrationSummary.decode(b)
            require(got == summary, "MigrationSummary round trip")
        }
    default:
        func f64() -> Double { Double(bitPattern: input.integer(UInt64.self)) }
        let a = f64(), b = f64()
        expectDecodes("SetupAccept", SetupAccept(setupMilliseconds: a, resumeEstimateMilliseconds: b).encoded()) { x throws(WireError) in
            let got = try SetupAccept.decodeIfPresent(x)
            require(got.map { sameBits($0.setupMilliseconds, a) && sameBits($0.resumeEstimateMilliseconds, b) } == true, "SetupAccept")
        }
        expectDecodes("LoadStats", LoadStats(loadedBytes: a, bytesPerSecond: b).encoded()) { x throws(WireError) in
            let got = try LoadStats.decode(x)
            require(sameBits(got.loadedBytes, a) && sameBits(got.bytesPerSecond, b), "LoadStats")
        }
        expectDecodes("Loaded", Loaded(loadMilliseconds: a, validateMilliseconds: b).encoded()) { x throws(WireError) in
            let got = try Loaded.decode(x)
            require(sameBits(got.loadMilliseconds, a) && sameBits(got.validateMilliseconds, b), "Loaded")
        }
        expectDecodes("Resumed", Resumed(commitToRunningMilliseconds: a, resumeMilliseconds: b).encoded()) { x throws(WireError) in
            let got = try Resumed.decode(x)
            require(sameBits(got.commitToRunningMilliseconds, a) && sameBits(got.resumeMilliseconds, b), "Resumed")
        }
    }
    return 0
}

/// Bytes one side encoded must decode at the other: a refusal here is a bug (the peer would
/// drop a well-formed message).
private func expectDecodes(_ what: String, _ bytes: [UInt8], _ body: ([UInt8]) throws(WireError) -> Void) {
    do throws(WireError) { try body(bytes) } catch {
        require(false, "\(what) refused its own encoding (\(bytes.count) bytes): \(error)")
    }
}

/// PayloadReader over the input's tail, driven by its head: [op count u8][ops ...][bytes ...].
/// Each op reads one field; a success must advance the reader by exactly the field's size, and
/// nothing (a throw included) may move it past `bytes` or read outside them.
private func readerScript(_ input: inout FuzzInput) {
    let count = Int(input.u8() % 32)
    var ops: [UInt8] = []
    for _ in 0..<count { ops.append(input.u8()) }
    var reader = PayloadReader(input.restArray())
    for op in ops {
        let before = reader.position
        var size = 0
        do throws(WireError) {
            switch op % 8 {
            case 0: _ = try reader.u8(); size = 1
            case 1: _ = try reader.u16(); size = 2
            case 2: _ = try reader.u32(); size = 4
            case 3: _ = try reader.u64(); size = 8
            case 4: _ = try reader.f64(); size = 8
            case 5: size = 4 + (try reader.blob()).count
            case 6:
                let limit = Int(op >> 3) * 64  // 0 ... 1984
                let blob = try reader.blob(limit: limit)
                require(blob.count <= limit, "blob over its limit")
                size = 4 + blob.count
            default:
                let text = try reader.string()
                require(isEscapedPeerText(text), "string not escaped")
                size = reader.position - before
            }
            require(reader.position == before + size, "reader advanced \(reader.position - before), read \(size)")
        } catch {
            require(!error.description.isEmpty, "empty WireError description")
        }
        require(reader.position <= reader.bytes.count && reader.remaining == reader.bytes.count - reader.position, "reader past its end")
    }
}

/// Hard bounds on every length the wire carries. A length over its bound is rejected before it
/// is used to size anything.
public enum WireLimits {
    /// The wire format version this build speaks. Version 2 added page-granular `pages` frames
    /// (an extent list and the dirty pages packed back to back); a version-1 peer is refused at
    /// its preamble with both versions named. Version 3 added `data` frames that leave out their
    /// chunk's zero pages (`FrameFlags.zeroPages`); a version-2 peer is refused the same way.
    public static let version: UInt16 = 3
    /// The largest raw chunk any peer may announce (16 MiB).
    public static let maxChunkSize = 16 << 20
    /// The smallest chunk size (4 KiB).
    public static let minChunkSize = 4 << 10
    /// The largest control-frame payload (messages, device headers, config state): 1 MiB.
    public static let maxControlPayload = 1 << 20
    /// The longest string a control payload carries (a device spec, an error message), in UTF-8
    /// bytes. `PayloadWriter.string` cuts to it, `PayloadReader.string` refuses more.
    public static let maxStringBytes = 4096
    /// The most channels (TCP connections) one session may use.
    public static let maxChannels: UInt16 = 64
    /// The most devices one migration session may carry.
    public static let maxDevices = 256

    /// `LZ4_COMPRESSBOUND`: the worst-case size of an LZ4 block for `rawLength` bytes.
    @inlinable public static func compressBound(_ rawLength: Int) -> Int {
        rawLength + rawLength / 255 + 16
    }

    /// The payload room a slot needs for a chunk of `chunkSize`: the compress bound.
    @inlinable public static func payloadCapacity(chunkSize: Int) -> Int {
        compressBound(chunkSize)
    }
}

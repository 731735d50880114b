/// How names (of lockspaces and resources, any bytes) are shown to people: in messages, reports and logs.
extension Array where Element == UInt8 {
    /// Lower-case hex, two digits a byte.
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(count * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes as text when they are printable UTF-8, else their hex.
    public var displayName: String {
        if let text = String(validating: self, as: UTF8.self), !text.unicodeScalars.contains(where: { $0.value < 32 }) {
            return text
        }
        return "0x" + hexString
    }
}

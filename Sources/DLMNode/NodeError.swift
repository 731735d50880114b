import Foundation

/// A node failure with a message for the operator.
public struct NodeError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension FileHandle {
    /// Writes `text`; a closed output (a reader that went: EPIPE) is ignored. (`write(_:)` traps on an error: dlmd
    /// died when the pipe its announcements went to was closed.)
    public func writeIgnoringErrors(_ text: String) {
        try? write(contentsOf: Data(text.utf8))
    }
}

import TOMLKit

/// The `[dlmd]` table of a config file: dlmd's own settings (README.md, "dlmd"), each optional (dlmd takes the
/// command line first, then this table, then its default). The names are the table's keys.
public struct DaemonSettings: Codable, Sendable, Equatable {
    public var socket: String?
    public var socket_mode: String?
    public var socket_group: String?
    public var listen: String?
    public var tls_cert: String?
    public var tls_key: String?
    public var tls_client_ca: String?
    public var data_dir: String?
    public var node_id: UInt32?
    public var deadlock_wait: Double?
    public var log_level: String?
    public var durability: String?
    public var map_size: Int?
    public var busy_poll: Int?
    public var max_connections: Int?
    public var max_lockspaces: Int?
    public var max_locks_per_connection: Int?
    public var max_locks_per_user: Int?
    public var max_queued_requests: Int?
    public var output_pause_kib: Int?
    public var output_limit_kib: Int?
    public var metrics: String?

    public init() {}

    /// Why a config file's `[dlmd]` table was refused: the file, and the line and column where known.
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Every key the table may have (the properties above), with the type of its value as TOML names it.
    public static let types: [String: String] = Dictionary(
        uniqueKeysWithValues: Mirror(reflecting: DaemonSettings()).children.compactMap { child in
            guard let key = child.label else { return nil }
            let type = Swift.type(of: child.value)
            return (key, type == String?.self ? "string" : type == Double?.self ? "number" : "integer")
        })

    /// The `[dlmd]` table of config text `text` (from `file`, named in errors); no settings when there is no such
    /// table. Refuses malformed TOML, a `dlmd` that is not a table, an unknown key, and a value of the wrong type.
    /// The values themselves (a socket mode, a durability) are dlmd's to check.
    public static func parse(_ text: String, file: String) throws(Invalid) -> DaemonSettings {
        do {
            let table = try ConfigText.parse(text)
            guard let section = table["dlmd"] else { return DaemonSettings() }
            guard let dlmd = section.table else { throw Invalid(description: "\(file): [dlmd] must be a table") }
            for key in dlmd.keys where types[key] == nil {
                throw Invalid(
                    description:
                        "\(file): unknown key dlmd.\(key) (known: \(types.keys.sorted().joined(separator: ", ")))")
            }
            return try TOMLDecoder().decode(DaemonSettings.self, from: dlmd)
        } catch let error as Invalid {
            throw error
        } catch let error as ConfigText.Malformed {
            throw Invalid(description: "\(file):\(error.line):\(error.column): \(error.message)")
        } catch let error as TOMLParseError {
            throw Invalid(
                description: "\(file):\(error.source.begin.line):\(error.source.begin.column): \(error.description)")
        } catch let error as DecodingError {
            throw Invalid(description: "\(file): \(describe(error))")
        } catch {
            throw Invalid(description: "\(file): \(error)")
        }
    }

    /// A value of the wrong type (the decoder says "type mismatch", or, for an optional, "key not found" for a
    /// key that is there).
    static func describe(_ error: DecodingError) -> String {
        let key: String
        switch error {
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            key = context.codingPath.map(\.stringValue).joined(separator: ".")
        case .keyNotFound(let missing, _):
            key = missing.stringValue
        default:
            return "\(error)"
        }
        return "dlmd.\(key) must be a\(types[key] == "integer" ? "n" : "") \(types[key] ?? "value of another type")"
    }
}

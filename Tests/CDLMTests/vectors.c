/*
 * The C codec (Sources/CDLM/wire.c) against the shared golden vectors of Protocol/vectors/ (see their
 * README.md): every good vector splits into one frame, decodes, re-encodes to the same bytes, and decodes to
 * the field values its header states; every bad vector is refused with the status of its `# expect:` line.
 *
 * Usage: vectors DIR. Prints one "ok - ..." or "not ok - ..." line per vector.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../Sources/CDLM/wire.h"

static int failures;

struct vector {
	char name[256];
	enum dlmw_direction direction;
	int has_direction;
	int expect; /* 0 for a good vector */
	uint8_t bytes[4096];
	size_t len;
	char header[64][1024]; /* the field lines of the header */
	int header_lines;
};

static int read_vector(const char *path, struct vector *v)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (line[0] == '#') {
			if (strncmp(line, "# direction: ", 13) == 0) {
				v->has_direction = 1;
				v->direction = strncmp(line + 13, "server", 6) == 0 ? DLMW_FROM_SERVER : DLMW_FROM_CLIENT;
			} else if (strncmp(line, "# expect: ", 10) == 0) {
				char *space = strchr(line + 10, ' ');
				v->expect = space ? atoi(space + 1) : -1;
			} else if (v->header_lines < 64) {
				snprintf(v->header[v->header_lines++], sizeof(v->header[0]), "%s", line);
			}
			continue;
		}
		for (char *p = line; *p;) {
			int hi, lo;
			if (isspace((unsigned char)*p)) {
				p++;
				continue;
			}
			if (!isxdigit((unsigned char)p[0]) || !isxdigit((unsigned char)p[1]) || v->len >= sizeof(v->bytes)) {
				fclose(f);
				return -1;
			}
			hi = isdigit((unsigned char)p[0]) ? p[0] - '0' : (tolower((unsigned char)p[0]) - 'a' + 10);
			lo = isdigit((unsigned char)p[1]) ? p[1] - '0' : (tolower((unsigned char)p[1]) - 'a' + 10);
			v->bytes[v->len++] = (uint8_t)(hi << 4 | lo);
			p += 2;
		}
	}
	fclose(f);
	return v->has_direction ? 0 : -1;
}

/* The decoded value of a numeric field named as in the vectors' headers. */
static int field_value(const struct dlmw_msg *m, size_t frame_len, const char *name, uint64_t *out)
{
#define F(n, expr)                        \
	if (strcmp(name, n) == 0) {       \
		*out = (uint64_t)(expr);  \
		return 1;                 \
	}
	F("length", frame_len - 4);
	F("type", m->type);
	switch (m->type) {
	case DLMW_HELLO:
		F("magic", m->u.hello.magic);
		F("min_version", m->u.hello.min_version);
		F("max_version", m->u.hello.max_version);
		F("pid", m->u.hello.pid);
		F("client_name.length", m->u.hello.name_len);
		break;
	case DLMW_PING:
	case DLMW_BYE:
	case DLMW_PONG:
		F("tag", m->tag);
		break;
	case DLMW_LOCKSPACE_OPEN:
		F("tag", m->tag);
		F("flags", m->u.ls_open.flags);
		F("lvb_length", m->u.ls_open.lvb_length);
		F("mode", m->u.ls_open.mode);
		F("name.length", m->u.ls_open.name_len);
		break;
	case DLMW_LOCKSPACE_RELEASE:
		F("tag", m->tag);
		F("lockspace", m->u.ls_release.lockspace);
		F("force", m->u.ls_release.force);
		break;
	case DLMW_PURGE:
		F("tag", m->tag);
		F("lockspace", m->u.purge.lockspace);
		F("node_id", m->u.purge.node_id);
		F("pid", m->u.purge.pid);
		break;
	case DLMW_FENCE_ACK:
		F("tag", m->tag);
		F("node_id", m->u.fence_ack.node_id);
		break;
	case DLMW_LOCK:
		F("tag", m->tag);
		F("lockspace", m->u.lock.lockspace);
		F("flags", m->u.lock.flags);
		F("mode", m->u.lock.mode);
		F("options", m->u.lock.options);
		F("priority", m->u.lock.priority);
		F("parent", m->u.lock.parent);
		F("timeout_ns", m->u.lock.timeout_ns);
		F("xid", m->u.lock.xid);
		F("name.length", m->u.lock.name_len);
		break;
	case DLMW_CONVERT:
		F("tag", m->tag);
		F("lock", m->u.convert.lock);
		F("flags", m->u.convert.flags);
		F("mode", m->u.convert.mode);
		F("priority", m->u.convert.priority);
		F("timeout_ns", m->u.convert.timeout_ns);
		F("lvb.length", m->u.convert.lvb_len);
		break;
	case DLMW_UNLOCK:
		F("tag", m->tag);
		F("lock", m->u.unlock.lock);
		F("flags", m->u.unlock.flags);
		F("lvb.length", m->u.unlock.lvb_len);
		break;
	case DLMW_DEADLOCK_CANCEL:
		F("tag", m->tag);
		F("lock", m->u.deadlock_cancel.lock);
		break;
	case DLMW_QUERY:
		F("tag", m->tag);
		F("kind", m->u.query.kind);
		F("argument.length", m->u.query.arg_len);
		break;
	case DLMW_HELLO_REPLY:
		F("version", m->u.hello_reply.version);
		F("node_id", m->u.hello_reply.node_id);
		F("max_name", m->u.hello_reply.max_name);
		F("max_lvb", m->u.hello_reply.max_lvb);
		F("server.length", m->u.hello_reply.server_len);
		break;
	case DLMW_LOCKSPACE:
		F("tag", m->tag);
		F("lockspace", m->u.lockspace.lockspace);
		F("lvb_length", m->u.lockspace.lvb_length);
		F("created", m->u.lockspace.created);
		break;
	case DLMW_PURGED:
		F("tag", m->tag);
		F("count", m->u.purged.count);
		break;
	case DLMW_OK:
		F("tag", m->tag);
		F("lock", m->u.ok.lock);
		break;
	case DLMW_ERROR:
		F("tag", m->tag);
		F("status", (uint32_t)m->u.error.status);
		F("message.length", m->u.error.message_len);
		break;
	case DLMW_COMPLETION:
		F("tag", m->tag);
		F("lock", m->u.completion.lock);
		F("status", (uint32_t)m->u.completion.status);
		F("sb_flags", m->u.completion.sb_flags);
		F("mode", m->u.completion.mode);
		F("lvb_sequence", m->u.completion.lvb_sequence);
		F("fencing_token", m->u.completion.fencing_token);
		F("lvb.length", m->u.completion.lvb_len);
		break;
	case DLMW_BLOCKING:
		F("lock", m->u.blocking.lock);
		F("mode", m->u.blocking.mode);
		break;
	case DLMW_QUERY_REPLY:
		F("tag", m->tag);
		F("json.length", m->u.query_reply.json_len);
		break;
	case DLMW_GOODBYE:
		F("reason.length", m->u.goodbye.reason_len);
		break;
	}
#undef F
	return 0;
}

/* The decoded bytes of a byte field, by its header name. */
static int field_bytes(const struct dlmw_msg *m, const char *name, const uint8_t **p, size_t *len)
{
#define B(n, ptr, l)                   \
	if (strcmp(name, n) == 0) {    \
		*p = (ptr);            \
		*len = (l);            \
		return 1;              \
	}
	switch (m->type) {
	case DLMW_HELLO:
		B("client_name", m->u.hello.name, m->u.hello.name_len);
		break;
	case DLMW_LOCKSPACE_OPEN:
		B("name", m->u.ls_open.name, m->u.ls_open.name_len);
		break;
	case DLMW_LOCK:
		B("name", m->u.lock.name, m->u.lock.name_len);
		break;
	case DLMW_CONVERT:
		B("lvb", m->u.convert.lvb, m->u.convert.lvb_len);
		break;
	case DLMW_UNLOCK:
		B("lvb", m->u.unlock.lvb, m->u.unlock.lvb_len);
		break;
	case DLMW_QUERY:
		B("argument", m->u.query.arg, m->u.query.arg_len);
		break;
	case DLMW_HELLO_REPLY:
		B("server", m->u.hello_reply.server, m->u.hello_reply.server_len);
		break;
	case DLMW_ERROR:
		B("message", m->u.error.message, m->u.error.message_len);
		break;
	case DLMW_COMPLETION:
		B("lvb", m->u.completion.lvb, m->u.completion.lvb_len);
		break;
	case DLMW_QUERY_REPLY:
		B("json", m->u.query_reply.json, m->u.query_reply.json_len);
		break;
	case DLMW_GOODBYE:
		B("reason", m->u.goodbye.reason, m->u.goodbye.reason_len);
		break;
	}
#undef B
	return 0;
}

/* Checks each field line of the header ("#  offset  name  type  value") against the decoded message. */
static int check_header(const struct vector *v, const struct dlmw_msg *m, size_t frame_len, char *why, size_t wn)
{
	int checked = 0;
	for (int i = 0; i < v->header_lines; i++) {
		const char *p = v->header[i] + 1;
		char name[64], type[32], value[200];
		int n;
		uint64_t got, want;
		while (*p == ' ')
			p++;
		if (!isdigit((unsigned char)*p))
			continue; /* not a field line */
		while (isdigit((unsigned char)*p))
			p++;
		if (sscanf(p, " %63s %31s%n", name, type, &n) != 2)
			continue;
		p += n;
		if (name[0] == '(')
			continue; /* (end, ...) and (extra) */
		if (isdigit((unsigned char)type[0])) {
			/* "N bytes" / "N byte": a byte field */
			char unit[16];
			int k;
			if (sscanf(p, " %15s%n", unit, &k) != 1)
				continue;
			p += k;
			while (*p == ' ')
				p++;
			snprintf(value, sizeof(value), "%s", p);
			value[strcspn(value, "\n")] = 0;
			if (value[0] == '"') {
				char *end = strrchr(value + 1, '"');
				const uint8_t *bytes;
				size_t len;
				if (!end || strchr(value, '\\') || strstr(value, "..."))
					continue;
				*end = 0;
				if (!field_bytes(m, name, &bytes, &len)) {
					snprintf(why, wn, "the header names the unknown byte field %s", name);
					return -1;
				}
				if (len != strlen(value + 1) || memcmp(bytes, value + 1, len) != 0) {
					snprintf(why, wn, "%s decodes to other bytes than \"%s\"", name, value + 1);
					return -1;
				}
				checked++;
			} else if (value[0] == '0' && value[1] == 'x' && !strstr(value, "...")) {
				const uint8_t *bytes;
				size_t len, hexlen = strcspn(value + 2, " ");
				if (!field_bytes(m, name, &bytes, &len)) {
					snprintf(why, wn, "the header names the unknown byte field %s", name);
					return -1;
				}
				if (hexlen != 2 * len) {
					snprintf(why, wn, "%s has %zu bytes, the header shows %zu", name, len, hexlen / 2);
					return -1;
				}
				for (size_t b = 0; b < len; b++) {
					unsigned x;
					if (sscanf(value + 2 + 2 * b, "%2x", &x) != 1 || x != bytes[b]) {
						snprintf(why, wn, "%s byte %zu differs from the header", name, b);
						return -1;
					}
				}
				checked++;
			}
			continue;
		}
		if (strcmp(type, "u8") && strcmp(type, "u16") && strcmp(type, "u32") && strcmp(type, "u64") &&
		    strcmp(type, "i32"))
			continue; /* raw bytes */
		if (sscanf(p, " %199s", value) != 1)
			continue;
		if (value[0] == '(')
			continue; /* "(absent: ...)" */
		errno = 0;
		want = strtoull(value, NULL, 0);
		if (errno) {
			snprintf(why, wn, "cannot read the value of %s in the header", name);
			return -1;
		}
		if (!field_value(m, frame_len, name, &got)) {
			snprintf(why, wn, "the header names the unknown field %s", name);
			return -1;
		}
		if (got != want) {
			snprintf(why, wn, "%s decodes to %" PRIu64 ", the header says %" PRIu64, name, got, want);
			return -1;
		}
		checked++;
	}
	if (checked < 2) {
		snprintf(why, wn, "only %d fields of the header checked", checked);
		return -1;
	}
	return 0;
}

static void check(const char *dir, const char *file)
{
	char path[1024], why[512] = "";
	struct vector *v = calloc(1, sizeof(*v));
	uint32_t max;
	size_t frame_len = 0;
	struct dlmw_msg m;
	int r, ok = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	snprintf(v->name, sizeof(v->name), "%s", file);
	if (read_vector(path, v)) {
		snprintf(why, sizeof(why), "cannot read the vector");
		goto done;
	}
	max = v->direction == DLMW_FROM_CLIENT ? DLMW_MAX_CLIENT_FRAME : DLMW_MAX_SERVER_FRAME;
	r = dlmw_split(v->bytes, v->len, max, &frame_len);
	if (v->expect == 0) {
		uint8_t out[4096];
		size_t n;
		if (r != 1 || frame_len != v->len) {
			snprintf(why, sizeof(why), "split gave %d, frame of %zu of %zu bytes", r, frame_len, v->len);
			goto done;
		}
		r = dlmw_decode(v->direction, v->bytes, v->len, &m);
		if (r) {
			snprintf(why, sizeof(why), "decode failed with %d", r);
			goto done;
		}
		n = dlmw_encoded_size(&m);
		if (n != v->len || dlmw_encode(&m, out) != n || memcmp(out, v->bytes, n) != 0) {
			snprintf(why, sizeof(why), "re-encoding gave %zu other bytes", n);
			goto done;
		}
		if (check_header(v, &m, frame_len, why, sizeof(why)))
			goto done;
		ok = 1;
	} else {
		if (r < 0) {
			ok = -r == v->expect;
			if (!ok)
				snprintf(why, sizeof(why), "split refused with %d, expected %d", -r, v->expect);
			goto done;
		}
		if (r == 0 || frame_len != v->len) {
			snprintf(why, sizeof(why), "split gave %d (frame %zu of %zu bytes)", r, frame_len, v->len);
			goto done;
		}
		r = dlmw_decode(v->direction, v->bytes, v->len, &m);
		ok = -r == v->expect;
		if (!ok)
			snprintf(why, sizeof(why), "decode returned %d, expected -%d", r, v->expect);
	}
done:
	if (ok) {
		printf("ok - vector %s\n", v->name);
	} else {
		printf("not ok - vector %s: %s\n", v->name, why);
		failures++;
	}
	free(v);
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
	struct dirent **list;
	int n, count = 0;
	if (argc != 2) {
		fprintf(stderr, "usage: %s Protocol/vectors\n", argv[0]);
		return 2;
	}
	n = scandir(argv[1], &list, NULL, by_name);
	if (n < 0) {
		perror(argv[1]);
		return 2;
	}
	for (int i = 0; i < n; i++) {
		size_t len = strlen(list[i]->d_name);
		if (len > 4 && strcmp(list[i]->d_name + len - 4, ".hex") == 0) {
			check(argv[1], list[i]->d_name);
			count++;
		}
		free(list[i]);
	}
	free(list);
	if (count < 70) {
		printf("not ok - vectors: only %d found in %s\n", count, argv[1]);
		failures++;
	}
	return failures ? 1 : 0;
}

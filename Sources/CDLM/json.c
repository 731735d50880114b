/* A small JSON reader; see json.h. */
#include "json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Every node and string lives in one arena, freed at once. */
struct arena {
	struct arena *next;
	size_t used, size;
	unsigned char data[];
};

struct parser {
	const char *p, *end;
	struct arena *arena;
	int depth;
};

static void *alloc(struct parser *ps, size_t size)
{
	struct arena *a = ps->arena;
	void *out;
	size = (size + 15) & ~(size_t)15;
	if (!a || a->size - a->used < size) {
		size_t cap = size > 16384 ? size : 16384;
		struct arena *n = malloc(sizeof(*n) + cap);
		if (!n)
			return NULL;
		n->next = a;
		n->used = 0;
		n->size = cap;
		ps->arena = n;
		a = n;
	}
	out = a->data + a->used;
	a->used += size;
	return out;
}

static void skip_ws(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static int hex4(const char *p, uint32_t *out)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (uint32_t)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (uint32_t)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static size_t put_utf8(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	} else if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	} else if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* A string starting after its opening quote. The unescaped form is never longer than the escaped one. */
static char *parse_string(struct parser *ps, size_t *length)
{
	const char *start = ps->p;
	const char *q = start;
	char *out, *o;
	while (q < ps->end && *q != '"') {
		if (*q == '\\')
			q++;
		q++;
	}
	if (q >= ps->end)
		return NULL;
	out = alloc(ps, (size_t)(q - start) + 1);
	if (!out)
		return NULL;
	o = out;
	while (ps->p < q) {
		char c = *ps->p++;
		if ((unsigned char)c < 0x20)
			return NULL;
		if (c != '\\') {
			*o++ = c;
			continue;
		}
		c = *ps->p++;
		switch (c) {
		case '"':
		case '\\':
		case '/':
			*o++ = c;
			break;
		case 'b':
			*o++ = '\b';
			break;
		case 'f':
			*o++ = '\f';
			break;
		case 'n':
			*o++ = '\n';
			break;
		case 'r':
			*o++ = '\r';
			break;
		case 't':
			*o++ = '\t';
			break;
		case 'u': {
			uint32_t cp, lo;
			if (q - ps->p < 4 || hex4(ps->p, &cp))
				return NULL;
			ps->p += 4;
			if (cp >= 0xD800 && cp <= 0xDBFF) {
				if (q - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || hex4(ps->p + 2, &lo) ||
				    lo < 0xDC00 || lo > 0xDFFF)
					return NULL;
				ps->p += 6;
				cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
			} else if (cp >= 0xDC00 && cp <= 0xDFFF) {
				return NULL;
			}
			o += put_utf8(o, cp);
			break;
		}
		default:
			return NULL;
		}
	}
	ps->p = q + 1;
	*o = 0;
	*length = (size_t)(o - out);
	return out;
}

static struct json *parse_value(struct parser *ps);

static struct json *parse_members(struct parser *ps, struct json *node, int object)
{
	struct json **tail = &node->child;
	char close = object ? '}' : ']';
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == close) {
		ps->p++;
		return node;
	}
	for (;;) {
		char *key = NULL;
		size_t key_len;
		struct json *member;
		skip_ws(ps);
		if (object) {
			if (ps->p >= ps->end || *ps->p != '"')
				return NULL;
			ps->p++;
			key = parse_string(ps, &key_len);
			if (!key)
				return NULL;
			skip_ws(ps);
			if (ps->p >= ps->end || *ps->p != ':')
				return NULL;
			ps->p++;
		}
		member = parse_value(ps);
		if (!member)
			return NULL;
		member->key = key;
		*tail = member;
		tail = &member->next;
		node->length++;
		skip_ws(ps);
		if (ps->p >= ps->end)
			return NULL;
		if (*ps->p == ',') {
			ps->p++;
			continue;
		}
		if (*ps->p == close) {
			ps->p++;
			return node;
		}
		return NULL;
	}
}

static int literal(struct parser *ps, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
		return 0;
	ps->p += n;
	return 1;
}

static struct json *parse_value(struct parser *ps)
{
	struct json *node;
	skip_ws(ps);
	if (ps->p >= ps->end || ++ps->depth > 64)
		return NULL;
	node = alloc(ps, sizeof(*node));
	if (!node)
		return NULL;
	memset(node, 0, sizeof(*node));
	switch (*ps->p) {
	case '{':
	case '[':
		node->type = *ps->p == '{' ? JSON_OBJECT : JSON_ARRAY;
		ps->p++;
		if (!parse_members(ps, node, node->type == JSON_OBJECT))
			return NULL;
		break;
	case '"':
		ps->p++;
		node->type = JSON_STRING;
		node->string = parse_string(ps, &node->length);
		if (!node->string)
			return NULL;
		break;
	case 't':
		node->type = JSON_TRUE;
		if (!literal(ps, "true"))
			return NULL;
		break;
	case 'f':
		node->type = JSON_FALSE;
		if (!literal(ps, "false"))
			return NULL;
		break;
	case 'n':
		node->type = JSON_NULL;
		if (!literal(ps, "null"))
			return NULL;
		break;
	default: {
		char buf[64];
		const char *s = ps->p;
		size_t n;
		char *endp;
		while (ps->p < ps->end && strchr("+-0123456789.eE", *ps->p))
			ps->p++;
		n = (size_t)(ps->p - s);
		if (n == 0 || n >= sizeof(buf))
			return NULL;
		memcpy(buf, s, n);
		buf[n] = 0;
		node->type = JSON_NUMBER;
		node->number = strtod(buf, &endp);
		if (*endp)
			return NULL;
	}
	}
	ps->depth--;
	return node;
}

static void free_arenas(struct arena *a)
{
	while (a) {
		struct arena *next = a->next;
		free(a);
		a = next;
	}
}

struct json_doc *json_parse(const char *text, size_t len)
{
	struct parser ps = {text, text + len, NULL, 0};
	struct json_doc *doc = malloc(sizeof(*doc));
	struct json *root;
	if (!doc)
		return NULL;
	root = parse_value(&ps);
	skip_ws(&ps);
	if (!root || ps.p != ps.end) {
		free_arenas(ps.arena);
		free(doc);
		return NULL;
	}
	doc->root = root;
	doc->arena = ps.arena;
	return doc;
}

void json_free(struct json_doc *doc)
{
	if (doc) {
		free_arenas(doc->arena);
		free(doc);
	}
}

const struct json *json_get(const struct json *object, const char *key)
{
	if (!object || object->type != JSON_OBJECT)
		return NULL;
	for (const struct json *m = object->child; m; m = m->next)
		if (m->key && strcmp(m->key, key) == 0)
			return m;
	return NULL;
}

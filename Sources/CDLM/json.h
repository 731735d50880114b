/*
 * A small JSON reader for the QUERY reports of Protocol/CLIENT.md §8: parses a document into a tree held
 * in one allocation, with lookups by key. Strings are unescaped (\uXXXX becomes UTF-8).
 */
#ifndef CDLM_JSON_H
#define CDLM_JSON_H

#include <stddef.h>

enum json_type { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json {
	enum json_type type;
	double number;
	char *string;	   /* JSON_STRING: NUL-terminated (may hold NULs before; see length) */
	size_t length;	   /* JSON_STRING: bytes; JSON_ARRAY / JSON_OBJECT: members */
	char *key;	   /* a member of an object: its key */
	struct json *next; /* the next member of the same array or object */
	struct json *child;
};

/* A parsed document: its root value and the memory that holds the tree. */
struct json_doc {
	struct json *root;
	void *arena;
};

/* Parses `len` bytes; NULL if they are not one JSON value (or nest deeper than 64). Free with json_free. */
struct json_doc *json_parse(const char *text, size_t len);
void json_free(struct json_doc *doc);

/* The member `key` of an object, or NULL. */
const struct json *json_get(const struct json *object, const char *key);

#endif

/* Depth-checked parsing of JSON text from outside (tasks/jsontext.h). */
#include "tasks/jsontext.h"

bool jsontext_depth_ok(const char *text, size_t len, unsigned max)
{
        bool in_string = false, escaped = false;
        unsigned depth = 0;

        for (size_t i = 0; i < len; i++) {
                char c = text[i];

                if (in_string) {
                        if (escaped)
                                escaped = false;
                        else if (c == '\\')
                                escaped = true;
                        else if (c == '"')
                                in_string = false;
                } else if (c == '"')
                        in_string = true;
                else if (c == '[' || c == '{') {
                        if (++depth > max)
                                return false;
                } else if ((c == ']' || c == '}') && depth > 0)
                        depth--;
        }
        return true;
}

json_t *jsontext_load_output(const char *text, size_t len)
{
        if (!jsontext_depth_ok(text, len, JSONTEXT_OUTPUT_DEPTH))
                return NULL;
        return json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

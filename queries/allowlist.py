"""The functions user SQL may call: an allow-list, because DuckDB grows new table functions, settings functions
and file readers every release and a deny-list is always one behind (README, "Reliability and security").

A name is here when calling it can only compute on its arguments: no settings, logging, profiling, files,
URLs, catalog or session state, sequences, sleeps, and no output whose size is set by an argument rather than
by the data (``repeat``, ``lpad``, ``printf``, scalar ``range``…), since DuckDB's memory limit does not cover
the strings and lists one function call builds. Functions that take a lambda are left out for the same reason
(a lambda can capture a whole list per element), as are edit distances (quadratic in one call, which the time
limit cannot interrupt) and ``list_aggregate`` (it calls any aggregate by name). Names are compared in lower
case, and only unqualified (or ``main.``) calls are accepted.

``queries.readonly.check_statement`` applies these lists to DuckDB's own parse of the statement
(``json_serialize_sql``). To allow a function, add it to the right set and to the test corpus of the tests that
use it (tests/test_sql_security.py).
"""

OPERATORS = frozenset({
    "+", "-", "*", "/", "//", "%", "**", "^", "&", "|", "<<", ">>", "~", "!__postfix", "@", "xor",
    "||", "~~", "!~~", "~~*", "!~~*", "~~~", "^@", "->>", "@>", "<@", "&&", "<->", "<=>",
})

MATH = frozenset({
    "abs", "acos", "acosh", "add", "asin", "asinh", "atan", "atan2", "atanh", "bit_count", "cbrt", "ceil",
    "ceiling", "cos", "cosh", "cot", "degrees", "divide", "even", "exp", "factorial", "fdiv", "floor", "fmod",
    "gamma", "gcd", "greatest", "greatest_common_divisor", "isfinite", "isinf", "isnan", "lcm", "least",
    "least_common_multiple", "lgamma", "ln", "log", "log10", "log2", "mod", "multiply", "nextafter", "pi", "pow",
    "power", "radians", "random", "round", "round_even", "roundbankers", "sign", "signbit", "sin", "sinh", "sqrt",
    "subtract", "tan", "tanh", "trunc",
})

TEXT = frozenset({
    "ascii", "base64", "bin", "bit_length", "char_length", "character_length", "chr", "concat", "concat_ws",
    "contains", "decode", "encode", "ends_with", "format_bytes", "formatreadabledecimalsize", "formatreadablesize",
    "from_base64", "from_binary", "from_hex", "hamming", "hash", "hex", "ilike_escape", "instr", "jaccard",
    "lcase", "left", "left_grapheme", "len", "length", "length_grapheme", "like_escape", "lower", "ltrim", "md5",
    "md5_number", "md5_number_lower", "md5_number_upper", "mismatches", "nfc_normalize", "not_ilike_escape",
    "not_like_escape", "octet_length", "ord", "parse_formatted_bytes", "position", "prefix", "regexp_escape",
    "regexp_extract", "regexp_extract_all", "regexp_full_match", "regexp_matches", "regexp_split_to_array",
    "reverse", "right", "right_grapheme", "rtrim", "sha1", "sha256", "split", "split_part", "starts_with",
    "str_split", "str_split_regex", "string_split", "string_split_regex", "string_to_array", "strip_accents",
    "strlen", "strpos", "substr", "substring", "substring_grapheme", "suffix", "to_base", "to_base64", "to_binary",
    "to_hex", "translate", "trim", "ucase", "unbin", "unhex", "unicode", "upper", "url_decode", "url_encode",
})

LISTS = frozenset({
    "array_append", "array_cat", "array_concat", "array_contains", "array_cosine_distance",
    "array_cosine_similarity", "array_cross_product", "array_distance", "array_distinct", "array_dot_product",
    "array_extract", "array_grade_up", "array_has", "array_has_all", "array_has_any", "array_indexof",
    "array_inner_product", "array_intersect", "array_length", "array_negative_dot_product",
    "array_negative_inner_product", "array_pop_back", "array_pop_front", "array_position", "array_prepend",
    "array_push_back", "array_push_front", "array_reverse", "array_reverse_sort", "array_select", "array_slice",
    "array_sort", "array_unique", "array_value", "array_where", "array_zip", "cardinality", "element_at",
    "flatten", "grade_up", "list_any_value", "list_append", "list_approx_count_distinct", "list_avg",
    "list_bit_and", "list_bit_or", "list_bit_xor", "list_bool_and", "list_bool_or", "list_cat", "list_concat",
    "list_contains", "list_cosine_distance", "list_cosine_similarity", "list_count", "list_distance",
    "list_distinct", "list_dot_product", "list_element", "list_entropy", "list_extract", "list_first",
    "list_grade_up", "list_has", "list_has_all", "list_has_any", "list_histogram", "list_indexof",
    "list_inner_product", "list_intersect", "list_kurtosis", "list_kurtosis_pop", "list_last", "list_mad",
    "list_max", "list_median", "list_min", "list_mode", "list_negative_dot_product", "list_negative_inner_product",
    "list_pack", "list_position", "list_prepend", "list_product", "list_reverse", "list_reverse_sort", "list_select",
    "list_sem", "list_skewness", "list_slice", "list_sort", "list_stddev_pop", "list_stddev_samp", "list_sum",
    "list_unique", "list_value", "list_var_pop", "list_var_samp", "list_where", "list_zip", "unnest",
})

STRUCTS_AND_MAPS = frozenset({
    "map", "map_concat", "map_contains", "map_contains_entry", "map_contains_value", "map_entries", "map_extract",
    "map_extract_value", "map_from_entries", "map_keys", "map_values", "row", "struct_concat", "struct_contains",
    "struct_extract", "struct_extract_at", "struct_has", "struct_indexof", "struct_insert", "struct_keys",
    "struct_pack", "struct_position", "struct_update", "struct_values", "union_extract", "union_tag",
    "union_value",
})

JSON = frozenset({
    "array_to_json", "from_json", "from_json_strict", "json", "json_array", "json_array_length", "json_contains",
    "json_exists", "json_extract", "json_extract_path", "json_extract_path_text", "json_extract_string",
    "json_keys", "json_merge_patch", "json_object", "json_pretty", "json_quote", "json_structure",
    "json_transform", "json_transform_strict", "json_type", "json_valid", "json_value", "row_to_json", "to_json",
})

TIME = frozenset({
    "current_time", "current_timestamp", "localtime", "localtimestamp",
    "age", "century", "current_date", "current_localtime", "current_localtimestamp", "date_add", "date_diff",
    "date_part", "date_sub", "date_trunc", "datediff", "datepart", "datesub", "datetrunc", "day", "dayname",
    "dayofmonth", "dayofweek", "dayofyear", "days_in_month", "decade", "epoch", "epoch_ms", "epoch_ns", "epoch_us",
    "era", "get_current_time", "get_current_timestamp", "hour", "isodow", "isoyear", "julian", "last_day",
    "make_date", "make_time", "make_timestamp", "make_timestamp_ms", "make_timestamp_ns", "make_timestamptz",
    "microsecond", "millennium", "millisecond", "minute", "month", "monthname", "nanosecond",
    "normalized_interval", "now", "quarter", "second", "strftime", "strptime", "time_bucket", "timezone",
    "timezone_hour", "timezone_minute", "to_centuries", "to_days", "to_decades", "to_hours", "to_microseconds",
    "to_millennia", "to_milliseconds", "to_minutes", "to_months", "to_quarters", "to_seconds", "to_timestamp",
    "to_weeks", "to_years", "today", "transaction_timestamp", "try_strptime", "week", "weekday", "weekofyear",
    "year", "yearweek",
})

OTHER = frozenset({"nullif", "typeof"})

AGGREGATES = frozenset({
    "any_value", "approx_count_distinct", "approx_quantile", "arbitrary", "arg_max", "arg_max_null",
    "arg_max_nulls_last", "arg_min", "arg_min_null", "arg_min_nulls_last", "argmax", "argmin", "array_agg", "avg",
    "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "corr", "count", "count_if", "count_star", "countif",
    "covar_pop", "covar_samp", "entropy", "favg", "first", "fsum", "geomean", "geometric_mean", "group_concat",
    "histogram", "histogram_exact", "json_group_array", "json_group_object", "json_group_structure", "kahan_sum",
    "kurtosis", "kurtosis_pop", "last", "list", "listagg", "mad", "max", "max_by", "mean", "median", "min", "min_by",
    "mode", "product", "quantile", "quantile_cont", "quantile_disc", "regr_avgx", "regr_avgy", "regr_count",
    "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy", "sem", "skewness", "stddev",
    "stddev_pop", "stddev_samp", "string_agg", "sum", "sum_no_overflow", "sumkahan", "var_pop", "var_samp",
    "variance", "wavg", "weighted_avg",
})

WINDOW = frozenset({
    "cume_dist", "dense_rank", "fill", "first_value", "lag", "last_value", "lead", "nth_value", "ntile",
    "percent_rank", "rank", "rank_dense", "row_number",
})

# Every name an expression may call: scalar functions, operators, aggregates and window functions.
FUNCTIONS = OPERATORS | MATH | TEXT | LISTS | STRUCTS_AND_MAPS | JSON | TIME | OTHER | AGGREGATES | WINDOW

# Bare names DuckDB's binder turns into calls when no column has them (SQL's value functions); those not in
# FUNCTIONS (the session's user, role, catalog, schema) are refused like any other call.
VALUE_FUNCTIONS = frozenset({"current_catalog", "current_date", "current_role", "current_schema", "current_time",
                             "current_timestamp", "current_user", "localtime", "localtimestamp", "session_user",
                             "user"})

# What may stand in FROM as a function: rows computed from the arguments, streamed (so the time limit holds).
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})

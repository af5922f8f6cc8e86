"""The hostile-statement corpus for user SQL, by class, and the queries that must keep working.

Built from the store's own table names, DuckDB's settings, pragmas, file readers and system functions, and the
escapes a red-team pass found (issue 22). ``REFUSED`` statements must be refused by the checker alone, without
running (``check_statement`` on a plain connection, no hardening); ``BOUNDED`` ones are SELECTs the allow-list
accepts whose cost the limits stop (time, response bytes, memory growth). tests/test_sql_security.py runs the
whole corpus through the checker, ``lensdb sql`` and ``POST /sql``; tests/test_http_security.py a sample of it
against a real server, with its memory measured.
"""

TABLES = ["models", "checkpoints", "vectors", "vector_tokens", "vocabularies", "tokens", "index_runs",
          "run_attempts", "sources", "lensdb_meta"]
SETTINGS = ["enable_external_access", "lock_configuration", "memory_limit", "threads", "temp_directory",
            "enable_logging", "logging_level", "enable_profiling", "profiling_output", "autoinstall_known_extensions",
            "autoload_known_extensions", "allow_unsigned_extensions", "extension_directory", "home_directory",
            "secret_directory", "max_temp_directory_size", "enable_http_logging", "http_logging_output",
            "allowed_directories", "allowed_paths", "default_null_order", "search_path", "TimeZone",
            "preserve_insertion_order", "python_enable_replacements"]
PRAGMAS = ["enable_profiling", "disable_profiling", "enable_logging", "threads=1", "memory_limit='1GB'",
           "database_size", "database_list", "show_tables", "table_info('models')", "storage_info('models')",
           "version", "platform", "user_agent", "collations", "functions", "metadata_info", "force_checkpoint",
           "enable_verification", "disable_optimizer", "enable_checkpoint_on_shutdown", "import_database('/tmp/x')",
           "copy_database('a', 'b')", "profiling_output='/tmp/profile.json'", "show('models')"]
FILE_READERS = ["read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto",
                "read_json_objects", "read_json_objects_auto", "read_ndjson", "read_ndjson_auto",
                "read_ndjson_objects", "read_text", "read_blob", "sniff_csv", "parquet_metadata", "parquet_schema",
                "parquet_file_metadata", "parquet_kv_metadata", "parquet_full_metadata", "parquet_bloom_probe",
                "glob", "read_duckdb", "iceberg_scan", "delta_scan", "sqlite_scan", "postgres_scan", "read_xlsx",
                "st_read", "json_execute_serialized_sql", "query", "query_table", "arrow_scan", "pandas_scan"]
SYSTEM_TABLE_FUNCTIONS = [
    "duckdb_settings", "duckdb_secrets", "duckdb_logs", "duckdb_log_contexts", "duckdb_extensions",
    "duckdb_databases", "duckdb_tables", "duckdb_views", "duckdb_columns", "duckdb_functions", "duckdb_memory",
    "duckdb_temporary_files", "duckdb_external_file_cache", "duckdb_variables", "duckdb_prepared_statements",
    "duckdb_connection_count", "duckdb_approx_database_count", "duckdb_dependencies", "duckdb_indexes",
    "duckdb_schemas", "duckdb_sequences", "duckdb_types", "duckdb_keywords", "duckdb_optimizers",
    "duckdb_constraints", "duckdb_secret_types", "duckdb_table_sample", "duckdb_profiling_settings",
    "enable_logging", "disable_logging", "truncate_duckdb_logs", "enable_profiling", "disable_profiling",
    "checkpoint", "force_checkpoint", "pragma_version", "pragma_platform", "pragma_user_agent",
    "pragma_database_size", "pragma_collations", "pragma_metadata_info", "test_all_types", "test_vector_types",
    "which_secret", "icu_calendar_names", "pg_timezone_names", "repeat_row", "summary", "seq_scan",
]
SYSTEM_VIEWS = ["duckdb_logs", "duckdb_settings", "information_schema.tables", "information_schema.columns",
                "information_schema.schemata", "pg_catalog.pg_settings", "pg_catalog.pg_class", "pg_settings",
                "sqlite_master", "sqlite_schema", "duckdb_tables", "duckdb_views", "pragma_database_list",
                "system.main.duckdb_settings", "temp.main.x", "memory.main.models", "system.information_schema.tables"]
SYSTEM_SCALARS = ["current_setting('memory_limit')", "current_setting('temp_directory')", "version()",
                  "current_database()", "current_schema()", "current_schemas(true)", "current_query()",
                  "current_user", "current_role", "session_user", "user", "getvariable('x')", "txid_current()",
                  "current_transaction_id()", "current_query_id()", "current_connection_id()", "nextval('s')",
                  "currval('s')", "setseed(0.5)", "write_log('x')", "parse_duckdb_log_message('x', 'y')",
                  "json_serialize_sql('SELECT 1')", "json_serialize_plan('SELECT * FROM read_csv(''/etc/passwd'')')",
                  "json_deserialize_sql('{}')", "error('boom')", "in_search_path('main', 'main')", "stats(1)",
                  "pg_sleep(100)", "sleep_ms(100000)", "enable_logging()", "uuid()", "gen_random_uuid()",
                  "pg_typeof(1)", "has_table_privilege('models', 'select')", "pg_postmaster_start_time()",
                  "inet_server_addr()", "get_block_size('x')", "alias(1)", "vector_type(1)",
                  "create_sort_key(1, 'ASC')", "finalize(1)"]
AMPLIFIERS = ["repeat('x', 1000000000)", "lpad('x', 1000000000, 'y')", "rpad('x', 1000000000, 'y')",
              "printf('%1000000000d', 1)", "format('{:>1000000000}', 1)", "bar(1, 0, 1, 1000000000)",
              "range(1000000000)", "generate_series(1, 1000000000)", "list_resize([1], 1000000000)",
              "array_resize([1], 1000000000)", "equi_width_bins(0, 10, 1000000000, false)",
              "bitstring('1', 1000000000)", "regexp_replace('aaaa', '', 'bbbbbbbbbb', 'g')",
              "replace('aaaa', 'a', 'bbbbbbbbbb')", "array_to_string([1, 2], 'xxxx')",
              "list_aggregate([1, 2], 'string_agg', 'xxxx')", "list_aggr([1], 'sum')", "aggregate([1], 'sum')",
              "list_transform([1, 2], x -> [1, 2])", "list_apply([1], x -> x)", "list_filter([1], x -> true)",
              "list_reduce([1, 2], (a, b) -> a || b)", "[x for x in [1, 2]]", "apply([1], x -> x)",
              "levenshtein('abc', 'abd')", "damerau_levenshtein('a', 'b')", "editdist3('a', 'b')",
              "jaro_similarity('a', 'b')", "jaro_winkler_similarity('a', 'b')", "list_string_agg([1])",
              "enum_range(NULL::VARCHAR)", "generate_subscripts([1], 1)", "unnest(range(1000000000))"]
AMPLIFYING_AGGREGATES = ["bitstring_agg(x, 0, 1000000000000)", "approx_top_k(x, 999999)",
                         "reservoir_quantile(x, 0.5, 1000000000)"]

REFUSED: dict[str, list[str]] = {
    "write": [s for t in TABLES for s in (
        f"DELETE FROM {t}", f"UPDATE {t} SET rowid = 0", f"INSERT INTO {t} SELECT * FROM {t}", f"DROP TABLE {t}",
        f"TRUNCATE {t}", f"ALTER TABLE {t} ADD COLUMN evil INTEGER")] + [
        "CREATE TABLE evil AS SELECT 1", "CREATE VIEW evil AS SELECT 1", "CREATE MACRO evil(x) AS x",
        "CREATE SEQUENCE evil", "CREATE TYPE evil AS ENUM ('a')", "CREATE SCHEMA evil",
        "CREATE INDEX evil ON models (name)",
        "CREATE TEMP TABLE evil AS SELECT 1", "CREATE OR REPLACE VIEW projections AS SELECT 1",
        "CREATE SECRET evil (TYPE s3, KEY_ID 'x', SECRET 'y')", "DROP SECRET evil", "DROP VIEW projections",
        "COMMENT ON TABLE models IS 'x'", "MERGE INTO models USING models AS s ON true WHEN MATCHED THEN DELETE",
        "INSERT OR REPLACE INTO lensdb_meta VALUES ('schema_version', '0')", "UPDATE lensdb_meta SET value = '0'",
        "BEGIN TRANSACTION", "COMMIT", "ROLLBACK", "ABORT", "CHECKPOINT", "FORCE CHECKPOINT", "VACUUM",
        "VACUUM ANALYZE models", "ANALYZE", "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p",
        "SET VARIABLE x = 1", "RESET VARIABLE x", "DETACH DATABASE lens"],
    "settings": [f"SET {s} = 'x'" for s in SETTINGS] + [f"SET GLOBAL {s} = 'x'" for s in SETTINGS[:8]]
    + [f"RESET {s}" for s in SETTINGS[:8]] + [f"PRAGMA {p}" for p in PRAGMAS]
    + ["CALL pragma_version()", "CALL enable_logging()", "CALL duckdb_settings()", "CALL checkpoint()",
       "SELECT * FROM enable_logging()", "SELECT * FROM enable_logging(level := 'trace')",
       "SELECT enable_logging()", "SELECT * FROM disable_logging()", "SELECT * FROM enable_profiling()",
       "SELECT * FROM duckdb_settings()", "SELECT value FROM duckdb_settings() WHERE name = 'temp_directory'",
       "SELECT current_setting('threads')", "SELECT * FROM duckdb_logs_parsed('QueryLog')",
       "SELECT * FROM truncate_duckdb_logs()"],
    "files": [f"SELECT * FROM {f}('{p}')" for f in FILE_READERS for p in ("/etc/passwd", "s3://bucket/x.parquet")]
    + ["SELECT * FROM '/etc/passwd'", "SELECT * FROM '/etc/hosts'", "SELECT * FROM 'lens.duckdb.wal'",
       "SELECT * FROM 'https://example.com/data.parquet'", "SELECT * FROM 's3://bucket/x.csv'",
       "SELECT * FROM '~/.ssh/id_rsa'", "SELECT * FROM 'x.csv'", "SELECT * FROM \"/etc/passwd\"",
       "FROM '/etc/shadow'", "SELECT * FROM read_csv(['/etc/passwd', '/etc/hosts'])",
       "SELECT * FROM models, '/etc/passwd'", "SELECT (SELECT count(*) FROM '/etc/passwd')",
       "SELECT * FROM models WHERE name IN (SELECT * FROM read_text('/etc/passwd'))",
       "WITH t AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM t",
       "SELECT * FROM glob('/*')", "SELECT * FROM glob('/proc/self/*')", "COPY models TO '/tmp/evil.csv'",
       "COPY (SELECT 1) TO '/tmp/evil.parquet' (FORMAT parquet)", "COPY models FROM '/etc/passwd'",
       "EXPORT DATABASE '/tmp/evil_export'", "IMPORT DATABASE '/tmp/evil_export'"],
    "null-arguments": [f"SELECT * FROM {f}(NULL)" for f in FILE_READERS]
    + [f"SELECT * FROM {f}(NULL)" for f in ("duckdb_settings", "enable_logging", "query_table", "repeat_row",
                                              "summary", "checkpoint")],
    "system": [f"SELECT * FROM {f}()" for f in SYSTEM_TABLE_FUNCTIONS]
    + [f"SELECT * FROM {v}" for v in SYSTEM_VIEWS] + [f"SELECT {f}" for f in SYSTEM_SCALARS]
    + ["SHOW TABLES", "SHOW ALL TABLES", "SHOW DATABASES", "DESCRIBE duckdb_settings", "SUMMARIZE duckdb_logs",
       "SELECT * FROM models, duckdb_settings()", "SELECT (SELECT value FROM duckdb_settings() LIMIT 1)"],
    "extensions-and-databases": [
        "INSTALL httpfs", "LOAD httpfs", "INSTALL '/tmp/evil.duckdb_extension'", "LOAD '/tmp/evil.so'",
        "FORCE INSTALL httpfs", "UPDATE EXTENSIONS", "ATTACH '/tmp/evil.duckdb' AS evil",
        "ATTACH ':memory:' AS m", "ATTACH 'md:' AS md", "DETACH lens", "USE memory", "USE system",
        "SELECT * FROM duckdb_extensions()", "EXPLAIN SELECT 1", "EXPLAIN ANALYZE SELECT 1",
        "SELECT * FROM lens.information_schema.tables", "SELECT * FROM system.main.duckdb_tables()"],
    "splitting": [
        "SELECT 1; DROP TABLE models", "SELECT 1 /* ; */; DELETE FROM models", "SELECT ';'; DELETE FROM models",
        "SELECT 1 -- comment\n; UPDATE models SET name = 'x'", "SELECT 1;;SELECT 2",
        "SELECT current_setting('threads'); SET enable_external_access = true", "SELECT 1; ATTACH 'x' AS y",
        "SELECT $$;$$; DROP TABLE vectors", "SELECT 'a'';'; DELETE FROM models", "SELECT 1\n;\nPRAGMA version",
        "SELECT 1; INSTALL httpfs", "/* */ SELECT 1; /* */ CHECKPOINT", "SELECT 1;\x0bDROP TABLE models",
        "SELECT E'\\';'; DROP TABLE models", "", "   ", ";", "-- only a comment", "/* only */",
        "SELECT * FROM query('DELETE FROM models')", "SELECT * FROM query_table('models'); DROP TABLE models"],
    "names-and-scope": [
        "SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x), x",
        "WITH b AS (SELECT * FROM a), a AS (SELECT 1 x) SELECT * FROM b",
        "WITH a AS (SELECT * FROM a) SELECT * FROM a",
        "SELECT * FROM (WITH \"/etc/passwd\" AS (SELECT 1) SELECT 1), \"/etc/passwd\"",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
        "WITH RECURSIVE t(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM t) SELECT max(length(s)) FROM t",
        "SELECT * FROM models AT (VERSION => 1)", "SELECT ?", "SELECT $1", "SELECT $name",
        "SELECT system.main.current_setting('threads')", "SELECT pg_catalog.abs(1)", "SELECT main.main.abs(1)",
        "SELECT * FROM memory.main.models", "SELECT * FROM temp.main.models", "SELECT * FROM main.main.models",
        "SELECT * FROM nosuchtable", "SELECT * FROM models_", "SELECT * FROM df", "SELECT * FROM pandas_df",
        "SELECT getenv('HOME')", "SELECT * FROM getenv('HOME')", "SELECT list_transform([1], x -> x)",
        "SELECT COLUMNS(c -> current_setting('threads') IS NULL) FROM models", "SELECT '{}' -> read_text('/x')",
        "SELECT * FROM models, LATERAL (SELECT * FROM read_csv('/etc/passwd'))",
        "SELECT 1 FROM models WHERE EXISTS (FROM duckdb_settings())",
        "SELECT * FROM unnest((SELECT list(name) FROM duckdb_settings()))",
        "SELECT * FROM range(3) t(x) JOIN duckdb_settings() ON true", "SELECT * FROM sqlite_master"],
    "amplifiers": [f"SELECT {a}" for a in AMPLIFIERS]
    + [f"SELECT {a} FROM range(10) t(x)" for a in AMPLIFYING_AGGREGATES]
    + ["SELECT * FROM repeat('x', 1000000000)", "SELECT * FROM repeat_row(1, num_rows := 1000000000)",
       "SELECT * FROM generate_series(1, 3) t(x) WHERE repeat('x', 10) = ''"],
    "bad-text": ["SELECT '\ud800'", "SELECT 1 -- \udcff", "SELECT 'a\x00b'", "SELECT 1 -- " + "-" * 40_000,
                 "SELECT 1 " + "UNION ALL SELECT 1 " * 5000],
}

# Nested beyond what DuckDB parses: refused by the checker, with one clear line.
REFUSED["depth"] = ["SELECT " + "NOT " * 3000 + "true",
        "SELECT " + "abs(" * 3000 + "1" + ")" * 3000,
        "SELECT * FROM " + "(SELECT * FROM " * 1500 + "models" + ")" * 1500,
        "SELECT " + "[" * 5000 + "]" * 5000, "SELECT " + "+".join(["1"] * 8000),
        "SELECT " + "list_value(" * 2000 + "1" + ")" * 2000]

# SELECTs the allow-list accepts whose cost the limits stop: (statement, what stops it).
BOUNDED: list[tuple[str, str]] = [
    ("SELECT count(*) FROM range(100000000000) a", "time"),
    ("SELECT count(*) FROM range(1000000) a, range(1000000) b", "time"),
    ("SELECT sum(a.range * b.range) FROM range(100000) a CROSS JOIN range(100000) b", "time"),
    ("SELECT string_agg('" + "x" * 1000 + "', '') FROM range(100000000000)", "memory-or-time"),
    ("SELECT list(range) FROM range(100000000000)", "memory-or-time"),
    ("SELECT * FROM range(100000000)", "bytes"),
    ("SELECT '" + "y" * 30_000 + "' FROM range(1000)", "bytes"),
    ("SELECT * FROM vector_tokens a, vector_tokens b", "bytes"),
]

# What users do with the store: each must still be accepted and answer.
ALLOWED = [
    "SELECT * FROM models",
    "SELECT model, count(*) AS n FROM projections GROUP BY model ORDER BY model",
    "SELECT * FROM projections WHERE token = 'paris' LIMIT 5",
    "SELECT model, count(*) AS n FROM vector_info GROUP BY 1 ORDER BY 1",
    "SELECT count(*) FROM vector_tokens",
    "SELECT DISTINCT component FROM vectors",
    "SELECT basis_flags FROM index_runs",
    "SELECT json_extract(basis_flags, '$.compute.device') AS device, basis_flags->>'$.compute.precision' "
    "FROM index_runs",
    "SELECT basis_flags::JSON->'compute' AS compute, basis_flags->'$.compute.device' FROM index_runs",
    "WITH hits AS (SELECT * FROM projections WHERE token = 'paris') SELECT model, max(zscore) FROM hits GROUP BY model",
    "SELECT c.checkpoint, c.step FROM checkpoint_steps c ORDER BY c.step",
    "SELECT layer, count(*) FILTER (WHERE side = 'top') FROM projections GROUP BY ALL ORDER BY ALL",
    "SELECT token, row_number() OVER (PARTITION BY model ORDER BY zscore DESC) AS r FROM projections "
    "QUALIFY r <= 2",
    "SELECT upper(token), length(token), lower(token), trim(token), token LIKE 'p%', token ILIKE 'P%', "
    "regexp_matches(token, '^p'), starts_with(token, 'p'), contains(token, 'ar') FROM projections LIMIT 3",
    "SELECT round(avg(score), 3), stddev(score), median(score), quantile_cont(score, 0.9), min(score), "
    "max(score), arg_max(token, score) FROM projections",
    "SELECT string_agg(token, ', ' ORDER BY rank) FROM projections WHERE rank <= 3 GROUP BY vector_id LIMIT 2",
    "SELECT list(token ORDER BY rank)[1:3], len(list(token)) FROM projections GROUP BY vector_id LIMIT 2",
    "SELECT [1, 2, 3] AS l, list_sum([1, 2]), list_sort([3, 1]), list_distinct([1, 1]), {'a': 1} AS s, "
    "struct_extract({'a': 1}, 'a'), map(['a'], [1]), unnest([1, 2])",
    "SELECT * FROM range(5) t(x) JOIN generate_series(1, 3) u(y) ON x = y",
    "SELECT * FROM unnest([1, 2, 3])",
    "SELECT key, value FROM json_each('{\"a\": 1, \"b\": 2}')",
    "SELECT date_trunc('day', indexed_at), strftime(indexed_at, '%Y'), year(indexed_at) FROM checkpoints",
    "SELECT CAST(1.5 AS INTEGER), TRY_CAST('x' AS INTEGER), 7 // 2, 7 % 2, 2 ** 3, abs(-1), greatest(1, 2), "
    "coalesce(NULL, 1), nullif(1, 1), CASE WHEN true THEN 'y' END, 1 BETWEEN 0 AND 2, 1 IN (1, 2)",
    "SELECT md5('x'), sha256('x'), hash('x'), hex(255), typeof(1), to_json({'a': 1})",
    "SELECT * FROM models m JOIN checkpoints c USING (model_id) LEFT JOIN index_runs r USING (checkpoint_id)",
    "SELECT name FROM models UNION ALL SELECT label FROM checkpoints EXCEPT SELECT 'x'",
    "VALUES (1, 'a'), (2, 'b')",
    "FROM models SELECT name",
    "DESCRIBE models",
    "DESCRIBE SELECT * FROM projections",
    "SELECT * FROM (SELECT * FROM models) AS sub WHERE EXISTS (SELECT 1 FROM vectors)",
    "SELECT * EXCLUDE (path) FROM checkpoints",
    "SELECT COLUMNS('.*_id') FROM vectors LIMIT 1",
    "SELECT main.abs(-1)",
    "SELECT * FROM lens.main.models",
    "SELECT * FROM \"Models\"",
    "SELECT name FROM models ORDER BY name COLLATE nocase",
    "SELECT count(*) FROM vectors USING SAMPLE 50%",
]

"""The word lists entity detection uses, in one place so ``docs/gap-format.md`` can point at them.

Each named product is ``(key, pattern, case_sensitive)``: ``key`` is the entity key (lower-case,
canonical: "Postgres" and "PostgreSQL" are both ``postgresql``), ``pattern`` a regular expression for
the spellings. Names that are also common English words (React, Flask, Express, Spring, Rails, Go,
Swift, ...) match only with their capital letter.
"""

from __future__ import annotations

DETERMINERS_SINGULAR = ("the", "this", "that")
DETERMINERS_PLURAL = ("the", "these", "those")

# Head nouns of ambiguous references, singular -> plural.
HEAD_NOUNS: dict[str, str] = {
    "system": "systems",
    "database": "databases",
    "server": "servers",
    "service": "services",
    "approach": "approaches",
    "method": "methods",
    "implementation": "implementations",
    "component": "components",
    "module": "modules",
    "function": "functions",
    "endpoint": "endpoints",
    "api": "apis",
    "model": "models",
    "library": "libraries",
    "framework": "frameworks",
    "file": "files",
    "config": "configs",
    "pipeline": "pipelines",
    "cluster": "clusters",
    "version": "versions",
    "solution": "solutions",
}

# Which entity types can define a reference with a given head noun, most specific first.
# suggest_definitions ranks a candidate of the first type above one of a later type.
HEAD_NOUN_TYPES: dict[str, tuple[str, ...]] = {
    "database": ("database",),
    "framework": ("framework",),
    "library": ("framework",),
    "file": ("file_reference",),
    "config": ("file_reference", "technical_component"),
    "version": ("software_version",),
    "model": ("technical_component", "user_defined"),
    "function": ("technical_component",),
    "method": ("technical_component", "user_defined"),
    "approach": ("user_defined", "technical_component"),
    "solution": ("user_defined", "technical_component"),
    "implementation": ("technical_component", "framework", "user_defined"),
    "module": ("technical_component", "file_reference"),
    "component": ("technical_component",),
    "endpoint": ("technical_component",),
    "api": ("technical_component", "framework"),
    "service": ("technical_component", "database"),
    "server": ("technical_component", "database", "software_version"),
    "cluster": ("database", "technical_component"),
    "pipeline": ("technical_component",),
    "system": ("technical_component", "database", "framework", "software_version", "user_defined"),
}

Product = tuple[str, str, bool]

DATABASES: tuple[Product, ...] = (
    ("postgresql", r"PostgreSQL|Postgres", False),
    ("mysql", r"MySQL", False),
    ("mariadb", r"MariaDB", False),
    ("sqlite", r"SQLite3?", False),
    ("redis", r"Redis", False),
    ("valkey", r"Valkey", False),
    ("mongodb", r"MongoDB|Mongo", False),
    ("cassandra", r"Cassandra", True),
    ("dynamodb", r"DynamoDB", False),
    ("elasticsearch", r"Elasticsearch", False),
    ("opensearch", r"OpenSearch", False),
    ("sql_server", r"SQL Server|MSSQL", False),
    ("oracle_database", r"Oracle Database|Oracle DB", False),
    ("cockroachdb", r"CockroachDB", False),
    ("clickhouse", r"ClickHouse", False),
    ("snowflake", r"Snowflake", True),
    ("bigquery", r"BigQuery", False),
    ("neo4j", r"Neo4j", False),
    ("influxdb", r"InfluxDB", False),
    ("couchdb", r"CouchDB", False),
    ("couchbase", r"Couchbase", False),
    ("memcached", r"Memcached", False),
    ("firestore", r"Firestore", False),
    ("duckdb", r"DuckDB", False),
    ("timescaledb", r"TimescaleDB", False),
    ("cosmos_db", r"Cosmos ?DB", False),
    ("supabase", r"Supabase", False),
)

FRAMEWORKS: tuple[Product, ...] = (
    ("django", r"Django", False),
    ("flask", r"Flask", True),
    ("fastapi", r"FastAPI", False),
    ("starlette", r"Starlette", False),
    ("react", r"React(?:\.js|JS)?", True),
    ("vue", r"Vue(?:\.js)?", True),
    ("angular", r"Angular(?:JS)?", True),
    ("svelte", r"SvelteKit|Svelte", True),
    ("nextjs", r"Next\.js", False),
    ("nuxt", r"Nuxt(?:\.js)?", True),
    ("nestjs", r"NestJS|Nest\.js", False),
    ("express", r"Express(?:\.js)?", True),
    ("spring_boot", r"Spring Boot", True),
    ("spring", r"Spring", True),
    ("rails", r"Ruby on Rails|Rails", True),
    ("laravel", r"Laravel", False),
    ("symfony", r"Symfony", False),
    ("aspnet", r"ASP\.NET(?: Core)?", False),
    ("pytorch", r"PyTorch", False),
    ("tensorflow", r"TensorFlow", False),
    ("keras", r"Keras", True),
    ("jax", r"JAX", True),
    ("scikit_learn", r"scikit-learn|sklearn", False),
    ("pandas", r"pandas", False),
    ("numpy", r"NumPy", False),
    ("langchain", r"LangChain", False),
    ("llamaindex", r"LlamaIndex", False),
    ("streamlit", r"Streamlit", False),
    ("gradio", r"Gradio", False),
    ("celery", r"Celery", True),
    ("sqlalchemy", r"SQLAlchemy", False),
    ("pydantic", r"Pydantic", False),
    ("tailwind", r"Tailwind(?: CSS)?", True),
    ("bootstrap", r"Bootstrap", True),
    ("jquery", r"jQuery", False),
    ("spark", r"Apache Spark|PySpark|Spark", True),
    ("phoenix", r"Phoenix", True),
    ("htmx", r"htmx", False),
    ("flutter", r"Flutter", True),
    ("electron", r"Electron", True),
    ("threejs", r"Three\.js", False),
    ("d3", r"D3\.js", False),
)

# Other software: only an entity when a version follows ("Python 3.11", "Ubuntu 22.04").
SOFTWARE: tuple[Product, ...] = (
    ("python", r"Python|CPython|PyPy", False),
    ("nodejs", r"Node\.js|NodeJS|Node", True),
    ("deno", r"Deno", True),
    ("bun", r"Bun", True),
    ("java", r"OpenJDK|JDK|Java", True),
    ("go", r"Golang|Go", True),
    ("rust", r"Rust", True),
    ("ruby", r"Ruby", True),
    ("php", r"PHP", False),
    ("typescript", r"TypeScript", False),
    ("javascript", r"JavaScript|ECMAScript|ES", True),
    ("kotlin", r"Kotlin", False),
    ("swift", r"Swift", True),
    ("scala", r"Scala", True),
    ("dotnet", r"\.NET(?: Core)?", False),
    ("ubuntu", r"Ubuntu", False),
    ("debian", r"Debian", False),
    ("fedora", r"Fedora", True),
    ("centos", r"CentOS", False),
    ("alpine", r"Alpine", True),
    ("rhel", r"RHEL", True),
    ("linux", r"Linux", False),
    ("windows", r"Windows Server|Windows", True),
    ("macos", r"macOS|OS X", False),
    ("ios", r"iOS", True),
    ("android", r"Android", True),
    ("kubernetes", r"Kubernetes|K8s", False),
    ("docker", r"Docker", False),
    ("nginx", r"nginx", False),
    ("apache", r"Apache", True),
    ("terraform", r"Terraform", False),
    ("npm", r"npm", True),
    ("pip", r"pip", True),
    ("gcc", r"GCC", True),
    ("clang", r"Clang", True),
    ("llvm", r"LLVM", True),
    ("cuda", r"CUDA", False),
    ("openssl", r"OpenSSL", False),
    ("git", r"Git", True),
    ("bash", r"Bash", True),
    ("perl", r"Perl", True),
    ("elixir", r"Elixir", True),
    ("erlang", r"Erlang", True),
    ("julia", r"Julia", True),
    ("chrome", r"Chrome", True),
    ("firefox", r"Firefox", True),
    ("gradle", r"Gradle", True),
    ("maven", r"Maven", True),
    ("webpack", r"webpack", False),
    ("vite", r"Vite", True),
    ("jupyterlab", r"JupyterLab", False),
)

# File extensions a bare file name must end with (case-insensitive). Paths with a directory part
# also need one unless they start with "/", "./", "../" or "~/".
FILE_EXTENSIONS: tuple[str, ...] = (
    "py", "pyi", "pyx", "ipynb", "js", "mjs", "cjs", "jsx", "ts", "tsx", "json", "jsonl", "yaml", "yml",
    "toml", "ini", "cfg", "conf", "env", "md", "rst", "txt", "csv", "tsv", "parquet", "sql", "db",
    "sqlite", "sh", "bash", "zsh", "ps1", "bat", "html", "htm", "css", "scss", "sass", "less", "xml",
    "svg", "png", "jpg", "jpeg", "gif", "pdf", "go", "rs", "java", "kt", "kts", "scala", "rb", "php",
    "c", "h", "cc", "cpp", "cxx", "hpp", "cs", "swift", "jl", "lua", "ex", "exs", "erl", "hs", "dart",
    "vue", "svelte", "proto", "graphql", "gql", "tf", "tfvars", "hcl", "lock", "log", "gradle", "mk",
    "cmake", "dockerfile", "zip", "tar", "gz", "tgz", "whl", "so", "dll", "exe", "wasm", "pkl", "pt",
    "pth", "onnx", "h5", "ckpt", "safetensors", "gguf", "npz", "npy", "xlsx", "xls", "docx", "pptx",
    "properties", "plist", "pem", "crt", "service", "tmpl", "j2", "tpl", "patch", "diff",
)  # fmt: skip

# File names without an extension that are still unmistakably files (case-sensitive).
BARE_FILE_NAMES: tuple[str, ...] = (
    "Dockerfile", "Containerfile", "Makefile", "Procfile", "Jenkinsfile", "Gemfile", "Rakefile",
    "Vagrantfile", "Justfile", "Brewfile", "Pipfile",
)  # fmt: skip

# Dot files (an optional extension may follow, as in ".env.local" or ".eslintrc.json").
DOT_FILES: tuple[str, ...] = (
    "env", "gitignore", "gitattributes", "gitmodules", "dockerignore", "editorconfig", "bashrc",
    "zshrc", "profile", "npmrc", "nvmrc", "pylintrc", "flake8", "prettierrc", "eslintrc", "babelrc",
    "python-version", "pre-commit-config", "coveragerc",
)  # fmt: skip

# Suffixes that make a CamelCase identifier a technical component ("AuthService", "UserRepository").
COMPONENT_SUFFIXES: tuple[str, ...] = (
    "Service", "Controller", "Manager", "Handler", "Client", "Server", "Repository", "Repo", "Factory",
    "Provider", "Gateway", "Worker", "Queue", "Cache", "Router", "Middleware", "Adapter", "Engine",
    "Store", "Module", "Component", "Api", "API", "Loader", "Parser", "Scheduler", "Processor",
    "Pipeline", "Builder", "Validator", "Listener", "Consumer", "Producer", "Proxy", "Agent", "Daemon",
    "Job", "Task", "View", "Model", "Serializer", "Resolver", "Dispatcher", "Registry", "Broker",
)  # fmt: skip

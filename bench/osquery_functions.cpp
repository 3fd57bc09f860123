// osquery's regex_match for plain SQLite, so that bench/pack_cost.py can time the packs'
// SQL the way osqueryd runs it: SQLite in C with the function in C++.
//
// Same behaviour as osquery/sql/sqlite_string.cpp (the only osquery function the packs
// call): std::regex (ECMAScript), compiled on every call as osquery does (no cache), the
// first match found by regex_search, group `index` of it or NULL, "Invalid regex" on a
// pattern std::regex refuses. The size limit (--regex_max_size) is left out: the packs'
// patterns are far below it.
//
// Built by pack_cost.py: g++ -O2 -shared -fPIC -o osquery_functions.so osquery_functions.cpp
#include <regex>
#include <string>

#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

static void regex_match(sqlite3_context* context, int argc, sqlite3_value** argv) {
  for (int i = 0; i < argc; i++) {
    if (sqlite3_value_type(argv[i]) == SQLITE_NULL) {
      sqlite3_result_null(context);
      return;
    }
  }
  const char* pattern = reinterpret_cast<const char*>(sqlite3_value_text(argv[1]));
  const std::string input(reinterpret_cast<const char*>(sqlite3_value_text(argv[0])));
  const auto index = static_cast<size_t>(sqlite3_value_int(argv[2]));
  std::smatch found;
  bool matched = false;
  try {
    matched = std::regex_search(input, found, std::regex(pattern));
  } catch (const std::regex_error&) {
    sqlite3_result_error(context, "Invalid regex", -1);
    return;
  }
  if (!matched || index >= found.size()) {
    sqlite3_result_null(context);
    return;
  }
  const std::string group = found[index].str();
  sqlite3_result_text(context, group.c_str(), static_cast<int>(group.size()), SQLITE_TRANSIENT);
}

extern "C" int sqlite3_osqueryfunctions_init(sqlite3* db, char** error, const sqlite3_api_routines* api) {
  SQLITE_EXTENSION_INIT2(api);
  (void)error;
  return sqlite3_create_function(db, "regex_match", 3, SQLITE_UTF8 | SQLITE_DETERMINISTIC, nullptr,
                                 regex_match, nullptr, nullptr);
}

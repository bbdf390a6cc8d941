// Structured logging: one JSON object per line on stderr (spdlog). Callers
// pass named fields; nothing here knows about requests, so it is the caller's
// duty never to pass a token, a secret or PHI (resource content, names,
// query strings).
#ifndef FHIRWARD_SERVER_LOG_H_
#define FHIRWARD_SERVER_LOG_H_

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "json/value.h"

namespace fhirward::server {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

// Sets up the JSON logger; level is "debug", "info", "warn", "error" or "off".
// Returns false for an unknown level.
bool InitLogging(const std::string& level);

// Writes out buffered lines (info lines are batched, at most a second late).
void FlushLogs();

// A field value: a string (escaped as JSON) or an integer.
struct LogValue {
  LogValue(std::string_view s) : text(s) {}
  LogValue(const std::string& s) : text(s) {}
  LogValue(const char* s) : text(s) {}
  LogValue(int64_t n) : number(n), is_number(true) {}
  LogValue(int n) : number(n), is_number(true) {}
  std::string_view text;
  int64_t number = 0;
  bool is_number = false;
};

void LogEvent(LogLevel level, std::string_view event,
              std::initializer_list<std::pair<std::string_view, LogValue>> fields);

}  // namespace fhirward::server

#endif  // FHIRWARD_SERVER_LOG_H_

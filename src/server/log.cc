#include "server/log.h"

#include <cstdio>
#include <memory>
#include <mutex>

#include "common/clock.h"
#include "spdlog/sinks/base_sink.h"
#include "spdlog/spdlog.h"

namespace fhirward::server {
namespace {

spdlog::level::level_enum ToSpd(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

std::string_view LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

// Writes JSON lines to stderr. Messages that are already JSON objects (from
// LogEvent) pass through; plain messages from other modules (e.g. src/net)
// are wrapped so that every line stays machine-readable.
class JsonLineSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::string_view text(msg.payload.data(), msg.payload.size());
    std::string line;
    if (!text.empty() && text.front() == '{') {
      line.assign(text);
    } else {
      json::Object o;
      o.emplace_back("time", json::Value::String(FormatInstant(msg.time)));
      o.emplace_back("level", json::Value::String(
                                  std::string(spdlog::level::to_string_view(msg.level).data(),
                                              spdlog::level::to_string_view(msg.level).size())));
      o.emplace_back("event", json::Value::String("log"));
      o.emplace_back("logger", json::Value::String(
                                   std::string(msg.logger_name.data(), msg.logger_name.size())));
      o.emplace_back("msg", json::Value::String(std::string(text)));
      line = json::Write(json::Value::MakeObject(std::move(o)));
    }
    buffer_ += line;
    buffer_.push_back('\n');
    // stderr is unbuffered: one write(2) per line costs more than the rest of
    // a request. Lines are batched; warnings and errors, a full buffer, and
    // the once-a-second flush (see InitLogging) write them out.
    if (buffer_.size() >= kFlushBytes || msg.level >= spdlog::level::warn) flush_();
  }
  void flush_() override {
    if (buffer_.empty()) return;
    std::fwrite(buffer_.data(), 1, buffer_.size(), stderr);
    std::fflush(stderr);
    buffer_.clear();
  }

 private:
  static constexpr size_t kFlushBytes = 16 * 1024;
  std::string buffer_;
};

}  // namespace

bool InitLogging(const std::string& level) {
  spdlog::level::level_enum lvl;
  if (level == "debug") {
    lvl = spdlog::level::debug;
  } else if (level == "info") {
    lvl = spdlog::level::info;
  } else if (level == "warn") {
    lvl = spdlog::level::warn;
  } else if (level == "error") {
    lvl = spdlog::level::err;
  } else if (level == "off") {
    lvl = spdlog::level::off;
  } else {
    return false;
  }
  auto logger = std::make_shared<spdlog::logger>("fhirward", std::make_shared<JsonLineSink>());
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  spdlog::flush_every(std::chrono::seconds(1));
  return true;
}

void FlushLogs() { spdlog::default_logger_raw()->flush(); }

void LogEvent(LogLevel level, std::string_view event,
              std::initializer_list<std::pair<std::string_view, LogValue>> fields) {
  auto logger = spdlog::default_logger_raw();
  if (!logger->should_log(ToSpd(level))) return;
  // Built by hand: this runs once per request.
  std::string line;
  line.reserve(256);
  auto str = [&line](std::string_view v) {
    line.push_back('"');
    for (unsigned char c : v) {
      if (c == '"' || c == '\\') {
        line.push_back('\\');
        line.push_back(static_cast<char>(c));
      } else if (c < 0x20 || c == 0x7f) {
        static constexpr char kHex[] = "0123456789abcdef";
        line += "\\u00";
        line.push_back(kHex[c >> 4]);
        line.push_back(kHex[c & 15]);
      } else {
        line.push_back(static_cast<char>(c));
      }
    }
    line.push_back('"');
  };
  line += "{\"time\":";
  str(FormatInstant(SystemClock::Get().Now()));
  line += ",\"level\":";
  str(LevelName(level));
  line += ",\"event\":";
  str(event);
  for (const auto& [k, v] : fields) {
    line.push_back(',');
    str(k);
    line.push_back(':');
    if (v.is_number) {
      line += std::to_string(v.number);
    } else {
      str(v.text);
    }
  }
  line.push_back('}');
  logger->log(ToSpd(level), "{}", line);
}

}  // namespace fhirward::server

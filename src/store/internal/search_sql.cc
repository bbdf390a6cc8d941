#include "store/internal/search_sql.h"

#include <chrono>
#include <cmath>
#include <limits>

#include "common/encoding.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "fhir/search_index.h"

namespace fhirward::store::internal {

const char* const kSearchSchema = R"sql(
CREATE TABLE IF NOT EXISTS search_token(
  tenant TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, code TEXT NOT NULL,
  system TEXT NOT NULL, blind INTEGER NOT NULL, id TEXT NOT NULL, text TEXT NOT NULL,
  PRIMARY KEY(tenant, type, param, code, system, blind, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS search_token_id ON search_token(tenant, type, id);
CREATE TABLE IF NOT EXISTS search_string(
  tenant TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, norm TEXT NOT NULL,
  exact TEXT NOT NULL, blind INTEGER NOT NULL, id TEXT NOT NULL,
  PRIMARY KEY(tenant, type, param, norm, exact, blind, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS search_string_exact ON search_string(tenant, type, param, exact)
  WHERE exact != '';
CREATE INDEX IF NOT EXISTS search_string_id ON search_string(tenant, type, id);
CREATE TABLE IF NOT EXISTS search_date(
  tenant TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, lo INTEGER NOT NULL,
  hi INTEGER NOT NULL, id TEXT NOT NULL,
  PRIMARY KEY(tenant, type, param, lo, hi, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS search_date_id ON search_date(tenant, type, id);
CREATE TABLE IF NOT EXISTS search_number(
  tenant TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, value REAL NOT NULL,
  system TEXT NOT NULL, code TEXT NOT NULL, id TEXT NOT NULL,
  PRIMARY KEY(tenant, type, param, value, system, code, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS search_number_id ON search_number(tenant, type, id);
CREATE TABLE IF NOT EXISTS search_reference(
  tenant TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, target_type TEXT NOT NULL,
  target_id TEXT NOT NULL, url TEXT NOT NULL, id TEXT NOT NULL,
  PRIMARY KEY(tenant, type, param, target_type, target_id, url, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS search_reference_target
  ON search_reference(tenant, target_type, target_id, type, param);
CREATE INDEX IF NOT EXISTS search_reference_id ON search_reference(tenant, type, id);
CREATE TABLE IF NOT EXISTS search_composite(
  tenant TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL, c1_code TEXT NOT NULL,
  c1_system TEXT NOT NULL, c2_system TEXT NOT NULL, c2_code TEXT NOT NULL,
  c2_value REAL NOT NULL, c2_lo INTEGER NOT NULL, c2_hi INTEGER NOT NULL,
  c2_text TEXT NOT NULL, id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS search_composite_value
  ON search_composite(tenant, type, param, c1_code);
CREATE INDEX IF NOT EXISTS search_composite_id ON search_composite(tenant, type, id);
)sql";

BlindIndex::BlindIndex(const SecretBytes& instance_key, std::string_view tenant)
    : key_(crypto::HmacSha256(instance_key.UnsafeView(),
                              "fhirward-blind-index-v1\x1f" + std::string(tenant))) {}

std::string BlindIndex::Of(std::string_view kind, std::string_view param,
                           std::string_view value) const {
  std::string msg;
  msg.reserve(kind.size() + param.size() + value.size() + 2);
  msg.append(kind).push_back('\x1f');
  msg.append(param).push_back('\x1f');
  msg.append(value);
  return HexEncode(crypto::HmacSha256(key_.UnsafeView(), msg).substr(0, 16));
}

namespace {

// The prefixes of a UTF-8 string at code point boundaries, up to `max`.
std::vector<std::string_view> CodePointPrefixes(std::string_view s, size_t max) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size() && out.size() < max) {
    ++i;
    while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
    out.push_back(s.substr(0, i));
  }
  return out;
}

std::string_view TruncateCodePoints(std::string_view s, size_t max) {
  auto p = CodePointPrefixes(s, max);
  return p.empty() ? std::string_view() : p.back();
}

}  // namespace

IndexRows BuildIndexRows(const BlindIndex& blind, std::string_view type,
                         const json::Value& resource, std::string_view base_url) {
  IndexRows rows;
  const fhir::SearchIndexer& indexer = fhir::SearchIndexer::R4();
  for (fhir::IndexEntry& e : indexer.Extract(type, resource, base_url)) {
    using K = fhir::IndexEntry::Kind;
    // The query side decides blindness per parameter: the rows must agree.
    if (!e.identifying && e.kind != K::kDate) {
      std::string_view base = std::string_view(e.param).substr(0, e.param.find(':'));
      e.identifying = indexer.IsIdentifying(type, base);
    }
    switch (e.kind) {
      case K::kToken:
        if (e.code.empty() && e.text.empty() && e.system.empty()) break;
        if (e.identifying) {
          if (e.code.empty()) break;
          rows.tokens.push_back({e.param, 1, e.system, blind.Of("t", e.param, e.code), ""});
        } else {
          rows.tokens.push_back({e.param, 0, e.system, e.code, e.text});
        }
        break;
      case K::kUri:
        rows.tokens.push_back({e.param, 0, "", e.text, ""});
        break;
      case K::kString: {
        std::string norm = fhir::NormalizeSearchString(e.text);
        if (norm.empty()) break;
        if (e.identifying) {
          auto prefixes = CodePointPrefixes(norm, kBlindPrefixMax);
          for (size_t i = 0; i < prefixes.size(); ++i) {
            rows.strings.push_back(
                {e.param, 1, blind.Of("p", e.param, prefixes[i]),
                 i + 1 == prefixes.size() ? blind.Of("x", e.param, e.text) : std::string()});
          }
        } else {
          rows.strings.push_back({e.param, 0, std::move(norm), e.text});
        }
        break;
      }
      case K::kDate:
        if (e.identifying) {
          // Exact match at year, month and day precision, nothing else.
          const std::string& t = e.text;
          for (size_t len : {size_t{4}, size_t{7}, size_t{10}}) {
            if (t.size() >= len) {
              rows.tokens.push_back({e.param, 1, "", blind.Of("d", e.param, t.substr(0, len)), ""});
            }
          }
        } else {
          rows.dates.push_back({e.param, e.lo, e.hi});
        }
        break;
      case K::kNumber:
        rows.numbers.push_back({e.param, "", "", e.value});
        break;
      case K::kQuantity:
        rows.numbers.push_back({e.param, e.system, e.code.empty() ? e.text : e.code, e.value});
        break;
      case K::kReference:
        rows.refs.push_back({e.param, e.target_type, e.target_id, e.text});
        break;
      case K::kComposite:
        // No composite of R4 pairs identifying values; one that would is not
        // stored in clear.
        if (e.identifying) break;
        rows.composites.push_back(
            {e.param, e.system, e.code, e.c2_system, e.c2_code, e.c2_text, e.value, e.lo, e.hi});
        break;
    }
  }
  return rows;
}

absl::Status DeleteIndex(Db& db, std::string_view tenant, std::string_view type,
                         std::string_view id) {
  for (const char* sql : {
           "DELETE FROM search_token INDEXED BY search_token_id WHERE tenant = ?1 AND type = ?2 "
           "AND id = ?3",
           "DELETE FROM search_string INDEXED BY search_string_id WHERE tenant = ?1 AND type = ?2 "
           "AND id = ?3",
           "DELETE FROM search_date INDEXED BY search_date_id WHERE tenant = ?1 AND type = ?2 AND "
           "id = ?3",
           "DELETE FROM search_number INDEXED BY search_number_id WHERE tenant = ?1 AND type = ?2 "
           "AND id = ?3",
           "DELETE FROM search_reference INDEXED BY search_reference_id WHERE tenant = ?1 AND type "
           "= ?2 AND id = ?3",
           "DELETE FROM search_composite INDEXED BY search_composite_id WHERE tenant = ?1 AND type "
           "= ?2 AND id = ?3",
       }) {
    auto st = db.Prepare(sql);
    if (!st.ok()) return st.status();
    st->Bind(1, tenant).Bind(2, type).Bind(3, id);
    if (auto s = st->Run(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status WriteIndex(Db& db, std::string_view tenant, std::string_view type, std::string_view id,
                        const IndexRows& rows, bool fresh) {
  if (!fresh) {
    if (auto s = DeleteIndex(db, tenant, type, id); !s.ok()) return s;
  }
  auto prep = [&](const char* sql) { return db.Prepare(sql); };
  if (!rows.tokens.empty()) {
    auto st = prep(
        "INSERT OR IGNORE INTO search_token(tenant, type, id, param, blind, system, code, text) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
    if (!st.ok()) return st.status();
    for (const auto& r : rows.tokens) {
      st->Reset().Bind(1, tenant).Bind(2, type).Bind(3, id).Bind(4, r.param);
      st->Bind(5, static_cast<int64_t>(r.blind)).Bind(6, r.system).Bind(7, r.code).Bind(8, r.text);
      if (auto s = st->Run(); !s.ok()) return s;
    }
  }
  if (!rows.strings.empty()) {
    auto st = prep(
        "INSERT OR IGNORE INTO search_string(tenant, type, id, param, blind, norm, exact) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!st.ok()) return st.status();
    for (const auto& r : rows.strings) {
      st->Reset().Bind(1, tenant).Bind(2, type).Bind(3, id).Bind(4, r.param);
      st->Bind(5, static_cast<int64_t>(r.blind)).Bind(6, r.norm);
      st->Bind(7, r.exact);
      if (auto s = st->Run(); !s.ok()) return s;
    }
  }
  if (!rows.dates.empty()) {
    auto st = prep(
        "INSERT OR IGNORE INTO search_date(tenant, type, id, param, lo, hi) VALUES (?1, ?2, ?3, "
        "?4, ?5, ?6)");
    if (!st.ok()) return st.status();
    for (const auto& r : rows.dates) {
      st->Reset().Bind(1, tenant).Bind(2, type).Bind(3, id).Bind(4, r.param);
      st->Bind(5, r.lo).Bind(6, r.hi);
      if (auto s = st->Run(); !s.ok()) return s;
    }
  }
  if (!rows.numbers.empty()) {
    auto st = prep(
        "INSERT OR IGNORE INTO search_number(tenant, type, id, param, system, code, value) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!st.ok()) return st.status();
    for (const auto& r : rows.numbers) {
      st->Reset().Bind(1, tenant).Bind(2, type).Bind(3, id).Bind(4, r.param);
      st->Bind(5, r.system).Bind(6, r.code).BindDouble(7, r.value);
      if (auto s = st->Run(); !s.ok()) return s;
    }
  }
  if (!rows.refs.empty()) {
    auto st = prep(
        "INSERT OR IGNORE INTO search_reference(tenant, type, id, param, target_type, target_id, "
        "url) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!st.ok()) return st.status();
    for (const auto& r : rows.refs) {
      st->Reset().Bind(1, tenant).Bind(2, type).Bind(3, id).Bind(4, r.param);
      st->Bind(5, r.target_type).Bind(6, r.target_id).Bind(7, r.url);
      if (auto s = st->Run(); !s.ok()) return s;
    }
  }
  if (!rows.composites.empty()) {
    auto st = prep(
        "INSERT INTO search_composite(tenant, type, id, param, c1_system, c1_code, c2_system, "
        "c2_code, c2_value, c2_lo, c2_hi, c2_text) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
    if (!st.ok()) return st.status();
    for (const auto& r : rows.composites) {
      st->Reset().Bind(1, tenant).Bind(2, type).Bind(3, id).Bind(4, r.param);
      st->Bind(5, r.c1_system).Bind(6, r.c1_code).Bind(7, r.c2_system).Bind(8, r.c2_code);
      st->BindDouble(9, r.c2_value).Bind(10, r.c2_lo).Bind(11, r.c2_hi).Bind(12, r.c2_text);
      if (auto s = st->Run(); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

namespace {

using BindValue = std::variant<std::string, int64_t, double>;

// SQL text with numbered parameters; values only ever travel as bindings.
class Sql {
 public:
  std::string text;
  std::string P(std::string v) { return Add(BindValue(std::move(v))); }
  std::string P(std::string_view v) { return Add(BindValue(std::string(v))); }
  std::string P(const char* v) { return Add(BindValue(std::string(v))); }
  std::string P(int64_t v) { return Add(BindValue(v)); }
  std::string P(double v) { return Add(BindValue(v)); }
  void BindAll(Stmt& st) const {
    for (size_t i = 0; i < binds_.size(); ++i) {
      const int n = static_cast<int>(i + 1);
      if (auto* s = std::get_if<std::string>(&binds_[i])) {
        st.Bind(n, *s);
      } else if (auto* d = std::get_if<double>(&binds_[i])) {
        st.BindDouble(n, *d);
      } else {
        st.Bind(n, std::get<int64_t>(binds_[i]));
      }
    }
  }

 private:
  std::string Add(BindValue v) {
    binds_.push_back(std::move(v));
    return "?" + std::to_string(binds_.size());
  }
  std::vector<BindValue> binds_;
};

// The upper bound of a prefix range: no UTF-8 text has a 0xFF byte.
std::string PrefixEnd(std::string_view p) { return std::string(p) + "\xff"; }

// "m.patient IN (?, ...)"; an empty set matches nothing.
std::string PatientIn(Sql& sql, const std::vector<std::string>& patients) {
  if (patients.empty()) return "0";
  if (patients.size() == 1) return "m.patient = " + sql.P(patients[0]);
  std::string out = "m.patient IN (";
  for (size_t i = 0; i < patients.size(); ++i) out += (i ? ", " : "") + sql.P(patients[i]);
  return out + ")";
}

class Compiler {
 public:
  Compiler(const BlindIndex& blind, std::string_view tenant) : blind_(blind), tenant_(tenant) {}

  // `SELECT A.id ... ` for resources of `type` matching `clauses`.
  absl::Status Select(Sql& sql, const std::string& alias, std::string_view type,
                      const std::vector<SearchClause>& clauses,
                      const std::optional<std::vector<std::string>>& patient) {
    sql.text += "SELECT " + alias + ".id FROM resource_current " + alias +
                " JOIN resource_versions " + alias + "v ON " + alias + "v.seq = " + alias +
                ".seq WHERE " + alias + ".tenant = " + sql.P(tenant_) + " AND " + alias +
                ".type = " + sql.P(type) + " AND " + alias + "v.deleted = 0";
    return Where(sql, alias, type, clauses, patient);
  }

  absl::Status Where(Sql& sql, const std::string& alias, std::string_view type,
                     const std::vector<SearchClause>& clauses,
                     const std::optional<std::vector<std::string>>& patient) {
    // One selective condition drives the query (an IN list the planner
    // starts from); the others are checked per candidate (correlated EXISTS
    // on the index rows of that resource). SQLite has no statistics on the
    // index tables, so the choice is made here, by kind.
    int driver = -1;
    int best = 0;
    for (size_t i = 0; i < clauses.size(); ++i) {
      int rank = Selectivity(clauses[i]);
      if (rank > best) {
        best = rank;
        driver = static_cast<int>(i);
      }
    }
    if (patient) {
      if (best < kCompartmentRank) {
        driver = -1;
        sql.text += " AND " + alias + ".id IN (SELECT m.id FROM compartment_members m WHERE " +
                    "m.tenant = " + sql.P(tenant_) + " AND " + PatientIn(sql, *patient) +
                    " AND m.type = " + sql.P(type) + ")";
      }
      sql.text += " AND EXISTS (SELECT 1 FROM compartment_members m WHERE m.tenant = " + alias +
                  ".tenant AND m.type = " + alias + ".type AND m.id = " + alias +
                  ".id AND m.version = " + alias + ".version AND " + PatientIn(sql, *patient) + ")";
    }
    for (size_t i = 0; i < clauses.size(); ++i) {
      sql.text += " AND ";
      if (auto s = Clause(sql, alias, type, clauses[i], static_cast<int>(i) != driver); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

 private:
  static constexpr int kCompartmentRank = 75;

  // How few rows a clause's IN list is likely to hold (higher: fewer); 0 for
  // clauses that can never drive (negations, :missing, scans).
  static int Selectivity(const SearchClause& c) {
    using K = SearchClause::Kind;
    if (c.modifier == "not" || c.modifier == "missing" || c.modifier == "contains" ||
        c.modifier == "text" || c.modifier == "above") {
      return 0;
    }
    switch (c.kind) {
      case K::kId:
        return 100;
      case K::kReference:
        return 90;
      case K::kToken:
        return c.blind ? 85 : 60;
      case K::kString:
        return c.blind ? 70 : (c.modifier == "exact" ? 65 : 50);
      case K::kUri:
        return 55;
      case K::kChain:
      case K::kHas:
        return 40;
      case K::kDate:
        return c.blind ? 80 : 10;
      case K::kNumber:
      case K::kQuantity:
      case K::kLastUpdated:
        return 10;
      case K::kComposite:
        return 60;
    }
    return 0;
  }

  static const char* TableOf(SearchClause::Kind k, bool blind) {
    switch (k) {
      case SearchClause::Kind::kToken:
      case SearchClause::Kind::kUri:
        return "search_token";
      case SearchClause::Kind::kString:
        return "search_string";
      case SearchClause::Kind::kDate:
        return blind ? "search_token" : "search_date";
      case SearchClause::Kind::kNumber:
      case SearchClause::Kind::kQuantity:
        return "search_number";
      case SearchClause::Kind::kReference:
        return "search_reference";
      case SearchClause::Kind::kComposite:
        return "search_composite";
      default:
        return nullptr;
    }
  }

  // `correlated`: checked per candidate row of `alias` instead of as an IN list.
  absl::Status Clause(Sql& sql, const std::string& alias, std::string_view type,
                      const SearchClause& c, bool correlated) {
    using K = SearchClause::Kind;
    if (c.kind == K::kId) {
      sql.text += alias + ".id IN (";
      for (size_t i = 0; i < c.values.size(); ++i) {
        sql.text += (i ? ", " : "") + sql.P(c.values[i].code);
      }
      sql.text += c.values.empty() ? "NULL)" : ")";
      return absl::OkStatus();
    }
    if (c.kind == K::kLastUpdated) {
      sql.text += "(";
      for (size_t i = 0; i < c.values.size(); ++i) {
        if (i) sql.text += " OR ";
        // last_updated is an instant with ms: a point range.
        std::string v = "(CAST(strftime('%s', " + alias + "v.last_updated) AS INTEGER) * 1000 + " +
                        "CAST(substr(strftime('%f', " + alias + "v.last_updated), 4) AS INTEGER))";
        DateCondition(sql, c.values[i], v, v);
      }
      sql.text += ")";
      return absl::OkStatus();
    }
    if (c.kind == K::kChain) {
      if (c.sub.empty()) return Error(ErrorCode::kInvalidParameter, "empty chain");
      const std::string inner = "c" + std::to_string(++depth_);
      sql.text += alias +
                  ".id IN (SELECT r.id FROM search_reference r WHERE r.tenant = " + sql.P(tenant_) +
                  " AND r.type = " + sql.P(type) + " AND r.param = " + sql.P(c.param) +
                  " AND r.target_type = " + sql.P(c.target_type) + " AND r.target_id IN (";
      if (auto s = Select(sql, inner, c.target_type, c.sub, c.narrow_patients); !s.ok()) return s;
      sql.text += "))";
      return absl::OkStatus();
    }
    if (c.kind == K::kHas) {
      if (c.sub.empty()) return Error(ErrorCode::kInvalidParameter, "empty _has");
      const std::string inner = "c" + std::to_string(++depth_);
      sql.text += alias + ".id IN (SELECT r.target_id FROM search_reference r WHERE r.tenant = " +
                  sql.P(tenant_) + " AND r.type = " + sql.P(c.target_type) +
                  " AND r.param = " + sql.P(c.param) + " AND r.target_type = " + sql.P(type) +
                  " AND r.id IN (";
      if (auto s = Select(sql, inner, c.target_type, c.sub, c.narrow_patients); !s.ok()) return s;
      sql.text += "))";
      return absl::OkStatus();
    }
    if (c.kind == K::kToken && c.modifier == "not" && c.narrow_patients && c.values.empty()) {
      // Compartment exclusion: not in any of these Patient compartments.
      sql.text += "NOT EXISTS (SELECT 1 FROM compartment_members m WHERE m.tenant = " + alias +
                  ".tenant AND m.type = " + alias + ".type AND m.id = " + alias +
                  ".id AND m.version = " + alias + ".version AND " +
                  PatientIn(sql, *c.narrow_patients) + ")";
      return absl::OkStatus();
    }
    if (c.kind == K::kToken && c.modifier == "not" && c.narrow_patients) {
      // Scoped exclusion: not (in one of these Patient compartments and
      // matching the values).
      SearchClause positive = c;
      positive.modifier.clear();
      positive.narrow_patients.reset();
      sql.text += "NOT (EXISTS (SELECT 1 FROM compartment_members m WHERE m.tenant = " + alias +
                  ".tenant AND m.type = " + alias + ".type AND m.id = " + alias +
                  ".id AND m.version = " + alias + ".version AND " +
                  PatientIn(sql, *c.narrow_patients) + ") AND ";
      if (auto s = Clause(sql, alias, type, positive, true); !s.ok()) return s;
      sql.text += ")";
      return absl::OkStatus();
    }
    const char* table = TableOf(c.kind, c.blind);
    if (table == nullptr) return Error(ErrorCode::kInvalidParameter, "unsupported clause");
    std::string param = c.param;
    if (c.modifier == "of-type" || c.modifier == "identifier") param += ":" + c.modifier;
    const bool negate = c.modifier == "not" || (c.modifier == "missing" && c.missing);
    if (correlated) {
      // Per candidate: through the (tenant, type, id) index, never a scan of
      // the parameter's values (SQLite has no statistics to tell them apart).
      sql.text += std::string(negate ? "NOT EXISTS" : "EXISTS") + " (SELECT 1 FROM " + table +
                  " s INDEXED BY " + table + "_id WHERE s.tenant = " + alias +
                  ".tenant AND s.type = " + alias + ".type AND s.id = " + alias +
                  ".id AND s.param = " + sql.P(param);
    } else {
      sql.text += alias + ".id " + (negate ? "NOT IN" : "IN") + " (SELECT id FROM " + table +
                  " WHERE tenant = " + sql.P(tenant_) + " AND type = " + sql.P(type) +
                  " AND param = " + sql.P(param);
    }
    if (c.modifier == "missing") {
      sql.text += ")";
      return absl::OkStatus();
    }
    sql.text += " AND (";
    for (size_t i = 0; i < c.values.size(); ++i) {
      if (i) sql.text += " OR ";
      sql.text += "(";
      if (auto s = Value(sql, c, param, c.values[i]); !s.ok()) return s;
      sql.text += ")";
    }
    if (c.values.empty()) sql.text += "0";
    sql.text += "))";
    return absl::OkStatus();
  }

  absl::Status Value(Sql& sql, const SearchClause& c, const std::string& param,
                     const SearchValue& v) {
    using K = SearchClause::Kind;
    switch (c.kind) {
      case K::kToken: {
        if (c.modifier == "text") {
          sql.text +=
              "blind = 0 AND instr(text, " + sql.P(fhir::NormalizeSearchString(v.text)) + ") > 0";
          return absl::OkStatus();
        }
        std::vector<std::string> parts;
        if (v.has_system) parts.push_back("system = " + sql.P(v.system));
        if (!v.code.empty()) {
          if (c.blind) {
            parts.push_back("blind = 1 AND code = " + sql.P(blind_.Of("t", param, v.code)));
          } else {
            // A parameter that is not identifying as a whole may still hold
            // identifying values (an Identifier among codes): they are blind.
            parts.push_back("((blind = 0 AND code = " + sql.P(v.code) +
                            ") OR (blind = 1 AND code = " + sql.P(blind_.Of("t", param, v.code)) +
                            "))");
          }
        }
        if (parts.empty()) parts.push_back("1");
        for (size_t i = 0; i < parts.size(); ++i) sql.text += (i ? " AND " : "") + parts[i];
        return absl::OkStatus();
      }
      case K::kUri:
        if (c.modifier == "below") {
          sql.text += "code >= " + sql.P(v.text) + " AND code < " + sql.P(PrefixEnd(v.text));
        } else if (c.modifier == "above") {
          sql.text += "substr(" + sql.P(v.text) + ", 1, length(code)) = code AND code != ''";
        } else {
          sql.text += "code = " + sql.P(v.text);
        }
        return absl::OkStatus();
      case K::kString: {
        if (c.blind) {
          if (c.modifier == "exact") {
            sql.text += "blind = 1 AND exact = " + sql.P(blind_.Of("x", param, v.text));
          } else {
            std::string norm = fhir::NormalizeSearchString(v.text);
            sql.text += "blind = 1 AND norm = " +
                        sql.P(blind_.Of("p", param, TruncateCodePoints(norm, kBlindPrefixMax)));
          }
          return absl::OkStatus();
        }
        if (c.modifier == "exact") {
          sql.text += "(blind = 0 AND exact = " + sql.P(v.text) +
                      ") OR (blind = 1 AND exact = " + sql.P(blind_.Of("x", param, v.text)) + ")";
        } else if (c.modifier == "contains") {
          sql.text +=
              "blind = 0 AND instr(norm, " + sql.P(fhir::NormalizeSearchString(v.text)) + ") > 0";
        } else {
          std::string norm = fhir::NormalizeSearchString(v.text);
          sql.text += "(blind = 0 AND norm >= " + sql.P(norm) + " AND norm < " +
                      sql.P(PrefixEnd(norm)) + ") OR (blind = 1 AND norm = " +
                      sql.P(blind_.Of("p", param, TruncateCodePoints(norm, kBlindPrefixMax))) + ")";
        }
        return absl::OkStatus();
      }
      case K::kDate:
        if (c.blind) {
          sql.text += "blind = 1 AND code = " + sql.P(blind_.Of("d", param, v.date_text));
          return absl::OkStatus();
        }
        DateCondition(sql, v, "lo", "hi");
        return absl::OkStatus();
      case K::kNumber:
      case K::kQuantity: {
        if (c.kind == K::kQuantity) {
          if (v.has_system) sql.text += "system = " + sql.P(v.system) + " AND ";
          if (!v.code.empty()) sql.text += "code = " + sql.P(v.code) + " AND ";
        }
        NumberCondition(sql, v);
        return absl::OkStatus();
      }
      case K::kComposite: {
        sql.text += "c1_code = " + sql.P(v.code);
        if (v.has_system) sql.text += " AND c1_system = " + sql.P(v.system);
        if (v.second.empty())
          return Error(ErrorCode::kInvalidParameter, "composite needs two parts");
        const SearchValue& w = v.second[0];
        sql.text += " AND ";
        if (c.component_kind == "token") {
          sql.text += "c2_code = " + sql.P(w.code);
          if (w.has_system) sql.text += " AND c2_system = " + sql.P(w.system);
        } else if (c.component_kind == "quantity") {
          if (w.has_system) sql.text += "c2_system = " + sql.P(w.system) + " AND ";
          if (!w.code.empty()) sql.text += "c2_code = " + sql.P(w.code) + " AND ";
          NumberCondition(sql, w, "c2_value");
        } else if (c.component_kind == "date") {
          DateCondition(sql, w, "c2_lo", "c2_hi");
        } else {
          std::string norm = fhir::NormalizeSearchString(w.text);
          sql.text += "c2_text >= " + sql.P(norm) + " AND c2_text < " + sql.P(PrefixEnd(norm));
        }
        return absl::OkStatus();
      }
      case K::kReference:
        if (!v.target_id.empty()) {
          if (!v.target_type.empty()) sql.text += "target_type = " + sql.P(v.target_type) + " AND ";
          sql.text += "target_id = " + sql.P(v.target_id);
        } else {
          sql.text += "url = " + sql.P(v.text);
        }
        return absl::OkStatus();
      default:
        return Error(ErrorCode::kInvalidParameter, "unsupported clause");
    }
  }

  // FHIR date comparison between the search range [lo, hi] and the stored
  // range [rlo, rhi] (R4 §3.1.1.4.2 / 3.1.1.5.4).
  static void DateCondition(Sql& sql, const SearchValue& v, const std::string& rlo,
                            const std::string& rhi) {
    const std::string lo = sql.P(v.lo), hi = sql.P(v.hi);
    switch (v.prefix) {
      case SearchPrefix::kEq:
        sql.text += rlo + " >= " + lo + " AND " + rhi + " <= " + hi;
        break;
      case SearchPrefix::kNe:
        sql.text += "NOT (" + rlo + " >= " + lo + " AND " + rhi + " <= " + hi + ")";
        break;
      case SearchPrefix::kGt:
        sql.text += rhi + " > " + hi;
        break;
      case SearchPrefix::kLt:
        sql.text += rlo + " < " + lo;
        break;
      case SearchPrefix::kGe:  // above the value, or within it
        sql.text += "(" + rhi + " > " + hi + " OR (" + rlo + " >= " + lo + " AND " + rhi +
                    " <= " + hi + "))";
        break;
      case SearchPrefix::kLe:  // below the value, or within it
        sql.text += "(" + rlo + " < " + lo + " OR (" + rlo + " >= " + lo + " AND " + rhi +
                    " <= " + hi + "))";
        break;
      case SearchPrefix::kSa:
        sql.text += rlo + " > " + hi;
        break;
      case SearchPrefix::kEb:
        sql.text += rhi + " < " + lo;
        break;
      case SearchPrefix::kAp: {
        // Within 10% of the distance to now, at least a day, either side.
        const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
        const int64_t gap = std::max<int64_t>(86400000, std::llabs(now - v.lo) / 10);
        sql.text += rhi + " >= " + sql.P(v.lo - gap) + " AND " + rlo + " <= " + sql.P(v.hi + gap);
        break;
      }
    }
  }

  // Numbers: the stored value against the search value; eq/ne use the range
  // the search value's precision implies ("100" is [99.5, 100.5)).
  static void NumberCondition(Sql& sql, const SearchValue& v, const std::string& col = "value") {
    switch (v.prefix) {
      case SearchPrefix::kEq:
        sql.text += col + " >= " + sql.P(v.vlo) + " AND " + col + " < " + sql.P(v.vhi);
        break;
      case SearchPrefix::kNe:
        sql.text +=
            "NOT (" + col + " >= " + sql.P(v.vlo) + " AND " + col + " < " + sql.P(v.vhi) + ")";
        break;
      case SearchPrefix::kGt:
      case SearchPrefix::kSa:
        sql.text += col + " > " + sql.P(v.value);
        break;
      case SearchPrefix::kLt:
      case SearchPrefix::kEb:
        sql.text += col + " < " + sql.P(v.value);
        break;
      case SearchPrefix::kGe:
        sql.text += col + " >= " + sql.P(v.value);
        break;
      case SearchPrefix::kLe:
        sql.text += col + " <= " + sql.P(v.value);
        break;
      case SearchPrefix::kAp: {
        const double gap = std::fabs(v.value) * 0.1;
        sql.text +=
            col + " >= " + sql.P(v.value - gap) + " AND " + col + " <= " + sql.P(v.value + gap);
        break;
      }
    }
  }

  const BlindIndex& blind_;
  std::string tenant_;
  int depth_ = 0;
};

std::string SortExpr(Sql& sql, const std::string& alias, const SortKey& k) {
  const std::string where = " WHERE s.tenant = " + alias + ".tenant AND s.type = " + alias +
                            ".type AND s.id = " + alias + ".id AND s.param = " + sql.P(k.param);
  switch (k.kind) {
    case SortKey::Kind::kId:
      return alias + ".id";
    case SortKey::Kind::kLastUpdated:
      return alias + "v.last_updated";
    case SortKey::Kind::kDate:
      return k.descending
                 ? "(SELECT MAX(s.hi) FROM search_date s INDEXED BY search_date_id" + where + ")"
                 : "(SELECT MIN(s.lo) FROM search_date s INDEXED BY search_date_id" + where + ")";
    case SortKey::Kind::kString:
      return std::string("(SELECT ") + (k.descending ? "MAX" : "MIN") +
             "(s.norm) FROM search_string s INDEXED BY search_string_id" + where +
             " AND s.blind = 0)";
    case SortKey::Kind::kToken:
      return std::string("(SELECT ") + (k.descending ? "MAX" : "MIN") +
             "(s.code) FROM search_token s INDEXED BY search_token_id" + where +
             " AND s.blind = 0)";
    case SortKey::Kind::kNumber:
      return std::string("(SELECT ") + (k.descending ? "MAX" : "MIN") +
             "(s.value) FROM search_number s INDEXED BY search_number_id" + where + ")";
    case SortKey::Kind::kReference:
      return std::string("(SELECT ") + (k.descending ? "MAX" : "MIN") +
             "(s.target_type || '/' || s.target_id) FROM search_reference s INDEXED BY "
             "search_reference_id" +
             where + ")";
  }
  return alias + ".id";
}

}  // namespace

namespace {
int ProgressCheck(void* p) {
  auto* at = static_cast<std::chrono::steady_clock::time_point*>(p);
  return std::chrono::steady_clock::now() > *at ? 1 : 0;
}
}  // namespace

ScopedBudget::ScopedBudget(Db& db, int64_t ms) : db_(db) {
  if (ms <= 0) return;
  deadline_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  sqlite3_progress_handler(db_.raw(), 1000, ProgressCheck, &deadline_);
  active_ = true;
}

ScopedBudget::~ScopedBudget() {
  if (active_) sqlite3_progress_handler(db_.raw(), 0, nullptr, nullptr);
}

absl::StatusOr<SearchIds> RunSearch(Db& db, const BlindIndex& blind, const SearchQuery& q) {
  ScopedBudget budget(db, q.time_budget_ms);
  SearchIds out;
  {
    Sql sql;
    Compiler comp(blind, q.tenant);
    if (auto s = comp.Select(sql, "c0", q.type, q.clauses, q.patients); !s.ok()) return s;
    sql.text += " ORDER BY ";
    for (const SortKey& k : q.sort) {
      std::string e = SortExpr(sql, "c0", k);
      // Resources without a value sort last either way.
      sql.text += "(" + e + ") IS NULL, " + e + (k.descending ? " DESC, " : " ASC, ");
    }
    sql.text +=
        "c0.id LIMIT " + sql.P(static_cast<int64_t>(q.count) + 1) + " OFFSET " + sql.P(q.offset);
    auto st = db.Prepare(sql.text);
    if (!st.ok()) return st.status();
    sql.BindAll(*st);
    for (;;) {
      auto row = st->Step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      out.ids.push_back(st->Text(0));
    }
  }
  if (q.total) {
    Sql sql;
    Compiler comp(blind, q.tenant);
    sql.text = "SELECT COUNT(*) FROM (";
    if (auto s = comp.Select(sql, "c0", q.type, q.clauses, q.patients); !s.ok()) return s;
    sql.text += ")";
    auto st = db.Prepare(sql.text);
    if (!st.ok()) return st.status();
    sql.BindAll(*st);
    auto row = st->Step();
    if (!row.ok()) return row.status();
    out.total = *row ? st->Int(0) : 0;
  }
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReferencesFrom(
    Db& db, std::string_view tenant, std::string_view type, const std::vector<std::string>& ids,
    std::string_view param, std::string_view target_type) {
  std::vector<std::pair<std::string, std::string>> out;
  if (ids.empty()) return out;
  Sql sql;
  sql.text =
      "SELECT DISTINCT target_type, target_id FROM search_reference INDEXED BY "
      "search_reference_id WHERE tenant = " +
      sql.P(tenant) + " AND type = " + sql.P(type) + " AND target_id != ''";
  if (param != "*") sql.text += " AND param = " + sql.P(param);
  if (!target_type.empty()) sql.text += " AND target_type = " + sql.P(target_type);
  sql.text += " AND id IN (";
  for (size_t i = 0; i < ids.size(); ++i) sql.text += (i ? ", " : "") + sql.P(ids[i]);
  sql.text += ") ORDER BY target_type, target_id";
  auto st = db.Prepare(sql.text);
  if (!st.ok()) return st.status();
  sql.BindAll(*st);
  for (;;) {
    auto row = st->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.emplace_back(st->Text(0), st->Text(1));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ReferencedBy(
    Db& db, std::string_view tenant, std::string_view source_type, std::string_view param,
    const std::vector<std::pair<std::string, std::string>>& targets,
    const std::optional<std::vector<std::string>>& patient, int limit) {
  std::vector<std::string> out;
  if (targets.empty()) return out;
  Sql sql;
  sql.text =
      "SELECT DISTINCT r.id FROM search_reference r JOIN resource_current c ON c.tenant = "
      "r.tenant AND c.type = r.type AND c.id = r.id WHERE r.tenant = " +
      sql.P(tenant) + " AND r.type = " + sql.P(source_type);
  if (param != "*") sql.text += " AND r.param = " + sql.P(param);
  sql.text += " AND (";
  for (size_t i = 0; i < targets.size(); ++i) {
    sql.text += (i ? " OR " : "") + std::string("(r.target_type = ") + sql.P(targets[i].first) +
                " AND r.target_id = " + sql.P(targets[i].second) + ")";
  }
  sql.text += ")";
  if (patient) {
    sql.text +=
        " AND EXISTS (SELECT 1 FROM compartment_members m WHERE m.tenant = c.tenant AND m.type = "
        "c.type AND m.id = c.id AND m.version = c.version AND " +
        PatientIn(sql, *patient) + ")";
  }
  sql.text += " ORDER BY r.id LIMIT " + sql.P(static_cast<int64_t>(limit));
  auto st = db.Prepare(sql.text);
  if (!st.ok()) return st.status();
  sql.BindAll(*st);
  for (;;) {
    auto row = st->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(st->Text(0));
  }
  return out;
}

}  // namespace fhirward::store::internal

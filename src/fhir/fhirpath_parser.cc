// FHIRPath lexer and parser: the normative grammar (http://hl7.org/fhirpath/N1/grammar.html)
// by precedence climbing, into the immutable AST of fhirpath_internal.h. Function names,
// argument counts, type specifiers and literal regular expressions are checked here, so that
// constraint authors see their mistakes when the expression is compiled.
#include <algorithm>
#include <charconv>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/str_cat.h"
#include "fhir/fhirpath.h"
#include "fhir/fhirpath_internal.h"
#include "json/utf8.h"

namespace fhirward::fhir::fhirpath {
namespace internal {
namespace {

enum class Tok : uint8_t {
  kEnd,
  kIdent,
  kDelimited,
  kString,
  kNumber,
  kDate,
  kDateTime,
  kTime,
  kSpecial,
  kPercent,
  kDot,
  kComma,
  kLParen,
  kRParen,
  kLBracket,
  kRBracket,
  kLBrace,
  kRBrace,
  kPlus,
  kMinus,
  kStar,
  kSlash,
  kAmp,
  kPipe,
  kEq,
  kNe,
  kEquiv,
  kNotEquiv,
  kLt,
  kLe,
  kGt,
  kGe,
};

struct Token {
  Tok kind = Tok::kEnd;
  uint32_t pos = 0;
  std::string_view text;  // the lexeme (for dates: without '@')
  std::string value;      // decoded text of strings and delimited identifiers
};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsIdentStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsIdentChar(char c) { return IsIdentStart(c) || IsDigit(c); }

class Lexer {
 public:
  explicit Lexer(std::string_view text) : s_(text) {}

  absl::Status Run(std::vector<Token>* out) {
    while (true) {
      if (absl::Status st = SkipSpace(); !st.ok()) return st;
      Token t;
      t.pos = static_cast<uint32_t>(i_);
      if (i_ >= s_.size()) {
        out->push_back(std::move(t));
        return absl::OkStatus();
      }
      if (absl::Status st = Next(&t); !st.ok()) return st;
      out->push_back(std::move(t));
    }
  }

 private:
  absl::Status Error(size_t pos, std::string_view what) const {
    return absl::InvalidArgumentError(Cat("fhirpath: ", what, " at ", internal::Position(s_, pos)));
  }

  absl::Status SkipSpace() {
    while (i_ < s_.size()) {
      char c = s_[i_];
      if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f') {
        ++i_;
      } else if (c == '/' && i_ + 1 < s_.size() && s_[i_ + 1] == '/') {
        while (i_ < s_.size() && s_[i_] != '\n') ++i_;
      } else if (c == '/' && i_ + 1 < s_.size() && s_[i_ + 1] == '*') {
        size_t end = s_.find("*/", i_ + 2);
        if (end == std::string_view::npos) return Error(i_, "unterminated comment");
        i_ = end + 2;
      } else {
        break;
      }
    }
    return absl::OkStatus();
  }

  absl::Status Next(Token* t) {
    size_t start = i_;
    char c = s_[i_];
    auto single = [&](Tok k) {
      t->kind = k;
      t->text = s_.substr(start, 1);
      ++i_;
      return absl::OkStatus();
    };
    auto pair = [&](Tok k) {
      t->kind = k;
      t->text = s_.substr(start, 2);
      i_ += 2;
      return absl::OkStatus();
    };
    char n = i_ + 1 < s_.size() ? s_[i_ + 1] : '\0';
    if (IsIdentStart(c)) {
      while (i_ < s_.size() && IsIdentChar(s_[i_])) ++i_;
      t->kind = Tok::kIdent;
      t->text = s_.substr(start, i_ - start);
      return absl::OkStatus();
    }
    if (IsDigit(c)) {
      while (i_ < s_.size() && IsDigit(s_[i_])) ++i_;
      if (i_ + 1 < s_.size() && s_[i_] == '.' && IsDigit(s_[i_ + 1])) {
        ++i_;
        while (i_ < s_.size() && IsDigit(s_[i_])) ++i_;
      }
      t->kind = Tok::kNumber;
      t->text = s_.substr(start, i_ - start);
      return absl::OkStatus();
    }
    switch (c) {
      case '\'':
        t->kind = Tok::kString;
        return Quoted('\'', t);
      case '`':
        t->kind = Tok::kDelimited;
        return Quoted('`', t);
      case '@':
        return DateTime(t);
      case '$': {
        ++i_;
        while (i_ < s_.size() && IsIdentChar(s_[i_])) ++i_;
        t->text = s_.substr(start, i_ - start);
        if (t->text != "$this" && t->text != "$index" && t->text != "$total") {
          return Error(start, Cat("unknown special variable '", t->text, "'"));
        }
        t->kind = Tok::kSpecial;
        return absl::OkStatus();
      }
      case '%':
        return single(Tok::kPercent);
      case '.':
        return single(Tok::kDot);
      case ',':
        return single(Tok::kComma);
      case '(':
        return single(Tok::kLParen);
      case ')':
        return single(Tok::kRParen);
      case '[':
        return single(Tok::kLBracket);
      case ']':
        return single(Tok::kRBracket);
      case '{':
        return single(Tok::kLBrace);
      case '}':
        return single(Tok::kRBrace);
      case '+':
        return single(Tok::kPlus);
      case '-':
        return single(Tok::kMinus);
      case '*':
        return single(Tok::kStar);
      case '/':
        return single(Tok::kSlash);
      case '&':
        return single(Tok::kAmp);
      case '|':
        return single(Tok::kPipe);
      case '=':
        return single(Tok::kEq);
      case '~':
        return single(Tok::kEquiv);
      case '!':
        if (n == '=') return pair(Tok::kNe);
        if (n == '~') return pair(Tok::kNotEquiv);
        break;
      case '<':
        return n == '=' ? pair(Tok::kLe) : single(Tok::kLt);
      case '>':
        return n == '=' ? pair(Tok::kGe) : single(Tok::kGt);
      default:
        break;
    }
    return Error(start, Cat("unexpected character '", std::string(1, c), "'"));
  }

  absl::Status Quoted(char quote, Token* t) {
    size_t start = i_++;
    std::string value;
    while (true) {
      if (i_ >= s_.size()) return Error(start, "unterminated string");
      char c = s_[i_++];
      if (c == quote) break;
      if (c != '\\') {
        value.push_back(c);
        continue;
      }
      if (i_ >= s_.size()) return Error(start, "unterminated string");
      char e = s_[i_++];
      switch (e) {
        case '\'':
        case '"':
        case '`':
        case '\\':
        case '/':
          value.push_back(e);
          break;
        case 'f':
          value.push_back('\f');
          break;
        case 'n':
          value.push_back('\n');
          break;
        case 'r':
          value.push_back('\r');
          break;
        case 't':
          value.push_back('\t');
          break;
        case 'u': {
          uint32_t cp;
          if (!Hex4(&cp)) return Error(i_ - 2, "invalid \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t low;
            if (i_ + 1 < s_.size() && s_[i_] == '\\' && s_[i_ + 1] == 'u') {
              i_ += 2;
              if (!Hex4(&low) || low < 0xDC00 || low > 0xDFFF) {
                return Error(i_, "invalid surrogate pair");
              }
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else {
              return Error(i_, "lone surrogate in \\u escape");
            }
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return Error(i_, "lone surrogate in \\u escape");
          }
          json::internal::AppendUtf8(value, cp);
          break;
        }
        default:
          return Error(i_ - 2, Cat("invalid escape '\\", std::string(1, e), "'"));
      }
    }
    t->text = s_.substr(start, i_ - start);
    t->value = std::move(value);
    return absl::OkStatus();
  }

  bool Hex4(uint32_t* out) {
    if (i_ + 4 > s_.size()) return false;
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_ + k];
      int d = IsDigit(c)               ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (d < 0) return false;
      v = v * 16 + d;
    }
    i_ += 4;
    *out = v;
    return true;
  }

  bool Digits(size_t n) {
    if (i_ + n > s_.size()) return false;
    for (size_t k = 0; k < n; ++k) {
      if (!IsDigit(s_[i_ + k])) return false;
    }
    return true;
  }

  // hh(:mm(:ss(.fff)?)?)?
  void TimeFormat() {
    if (!Digits(2)) return;
    i_ += 2;
    if (i_ < s_.size() && s_[i_] == ':' && (++i_, Digits(2))) {
      i_ += 2;
      if (i_ < s_.size() && s_[i_] == ':' && (++i_, Digits(2))) {
        i_ += 2;
        if (i_ + 1 < s_.size() && s_[i_] == '.' && IsDigit(s_[i_ + 1])) {
          ++i_;
          while (i_ < s_.size() && IsDigit(s_[i_])) ++i_;
        }
      }
    }
  }

  absl::Status DateTime(Token* t) {
    size_t start = i_++;
    if (i_ < s_.size() && s_[i_] == 'T') {
      ++i_;
      TimeFormat();
      t->kind = Tok::kTime;
    } else {
      if (!Digits(4)) return Error(start, "invalid date literal");
      i_ += 4;
      if (i_ < s_.size() && s_[i_] == '-' && (++i_, Digits(2))) {
        i_ += 2;
        if (i_ < s_.size() && s_[i_] == '-' && (++i_, Digits(2))) i_ += 2;
      }
      t->kind = Tok::kDate;
      if (i_ < s_.size() && s_[i_] == 'T') {
        ++i_;
        t->kind = Tok::kDateTime;
        size_t time_start = i_;
        TimeFormat();
        if (i_ > time_start && i_ < s_.size()) {
          if (s_[i_] == 'Z') {
            ++i_;
          } else if ((s_[i_] == '+' || s_[i_] == '-') && i_ + 5 < s_.size() + 0 &&
                     IsDigit(s_[i_ + 1]) && IsDigit(s_[i_ + 2]) && s_[i_ + 3] == ':' &&
                     IsDigit(s_[i_ + 4]) && IsDigit(s_[i_ + 5])) {
            i_ += 6;
          }
        }
      }
    }
    t->text = s_.substr(start + 1, i_ - start - 1);
    return absl::OkStatus();
  }

  std::string_view s_;
  size_t i_ = 0;
};

using NodePtr = std::unique_ptr<AstNode>;

struct SystemTypeName {
  std::string_view name;
  Item::Kind kind;
};
constexpr SystemTypeName kSystemTypes[] = {
    {"Boolean", Item::Kind::kBoolean}, {"String", Item::Kind::kString},
    {"Integer", Item::Kind::kInteger}, {"Decimal", Item::Kind::kDecimal},
    {"Date", Item::Kind::kDate},       {"DateTime", Item::Kind::kDateTime},
    {"Time", Item::Kind::kTime},       {"Quantity", Item::Kind::kQuantity},
};

bool IsKeywordOperator(std::string_view w) {
  return w == "and" || w == "or" || w == "xor" || w == "implies" || w == "div" || w == "mod";
}

class Parser {
 public:
  Parser(std::string_view text, std::vector<Token> tokens, const ParseOptions& options)
      : text_(text), tokens_(std::move(tokens)), options_(options) {}

  absl::StatusOr<NodePtr> Parse() {
    auto root = Expr(0, 0);
    if (!root.ok()) return root.status();
    if (Peek().kind != Tok::kEnd) return Error(Peek().pos, "unexpected token after expression");
    return root;
  }

 private:
  const Token& Peek(size_t ahead = 0) const {
    size_t k = std::min(i_ + ahead, tokens_.size() - 1);
    return tokens_[k];
  }
  const Token& Take() {
    const Token& t = tokens_[i_];
    if (i_ + 1 < tokens_.size()) ++i_;
    return t;
  }
  bool IsIdent(const Token& t, std::string_view w) const {
    return t.kind == Tok::kIdent && t.text == w;
  }

  absl::Status Error(size_t pos, std::string_view what) const {
    return absl::InvalidArgumentError(
        Cat("fhirpath: ", what, " at ", internal::Position(text_, pos)));
  }

  NodePtr Make(NodeKind kind, uint32_t pos) {
    auto n = std::make_unique<AstNode>();
    n->kind = kind;
    n->pos = pos;
    return n;
  }

  absl::Status Adopt(AstNode* parent, NodePtr child) {
    parent->height = std::max<uint32_t>(parent->height, child->height + 1);
    if (parent->height > options_.max_depth) {
      return Error(parent->pos, "expression nested too deeply");
    }
    parent->args.push_back(std::move(child));
    return absl::OkStatus();
  }

  absl::Status CheckDepth(int depth) const {
    if (static_cast<size_t>(depth) > options_.max_depth) {
      return Error(Peek().pos, "expression nested too deeply");
    }
    return absl::OkStatus();
  }

  // Binary operator at the current token: precedence (0 when none).
  int BinaryPrecedence(BinOp* op, bool* type_op) const {
    const Token& t = Peek();
    *type_op = false;
    switch (t.kind) {
      case Tok::kStar:
        *op = BinOp::kMul;
        return 10;
      case Tok::kSlash:
        *op = BinOp::kDiv;
        return 10;
      case Tok::kPlus:
        *op = BinOp::kAdd;
        return 9;
      case Tok::kMinus:
        *op = BinOp::kSub;
        return 9;
      case Tok::kAmp:
        *op = BinOp::kConcat;
        return 9;
      case Tok::kPipe:
        *op = BinOp::kUnion;
        return 7;
      case Tok::kLt:
        *op = BinOp::kLt;
        return 6;
      case Tok::kGt:
        *op = BinOp::kGt;
        return 6;
      case Tok::kLe:
        *op = BinOp::kLe;
        return 6;
      case Tok::kGe:
        *op = BinOp::kGe;
        return 6;
      case Tok::kEq:
        *op = BinOp::kEq;
        return 5;
      case Tok::kEquiv:
        *op = BinOp::kEquiv;
        return 5;
      case Tok::kNe:
        *op = BinOp::kNe;
        return 5;
      case Tok::kNotEquiv:
        *op = BinOp::kNotEquiv;
        return 5;
      case Tok::kIdent: {
        std::string_view w = t.text;
        if (w == "div") {
          *op = BinOp::kIntDiv;
          return 10;
        }
        if (w == "mod") {
          *op = BinOp::kMod;
          return 10;
        }
        if (w == "is" || w == "as") {
          *type_op = true;
          return 8;
        }
        if (w == "in") {
          *op = BinOp::kIn;
          return 4;
        }
        if (w == "contains") {
          *op = BinOp::kContains;
          return 4;
        }
        if (w == "and") {
          *op = BinOp::kAnd;
          return 3;
        }
        if (w == "or") {
          *op = BinOp::kOr;
          return 2;
        }
        if (w == "xor") {
          *op = BinOp::kXor;
          return 2;
        }
        if (w == "implies") {
          *op = BinOp::kImplies;
          return 1;
        }
        return 0;
      }
      default:
        return 0;
    }
  }

  absl::StatusOr<NodePtr> Expr(int min_prec, int depth) {
    if (absl::Status st = CheckDepth(depth); !st.ok()) return st;
    auto lhs = Unary(depth);
    if (!lhs.ok()) return lhs;
    NodePtr left = std::move(*lhs);
    while (true) {
      BinOp op;
      bool type_op;
      int prec = BinaryPrecedence(&op, &type_op);
      if (prec == 0 || prec < min_prec) break;
      const Token& t = Take();
      if (type_op) {
        NodePtr n = Make(t.text == "is" ? NodeKind::kIs : NodeKind::kAs, t.pos);
        auto spec = TypeSpecifier();
        if (!spec.ok()) return spec.status();
        n->type = std::move(*spec);
        if (absl::Status st = Adopt(n.get(), std::move(left)); !st.ok()) return st;
        left = std::move(n);
        continue;
      }
      auto rhs = Expr(prec + 1, depth + 1);
      if (!rhs.ok()) return rhs;
      NodePtr n = Make(NodeKind::kBinary, t.pos);
      n->op = op;
      if (absl::Status st = Adopt(n.get(), std::move(left)); !st.ok()) return st;
      if (absl::Status st = Adopt(n.get(), std::move(*rhs)); !st.ok()) return st;
      left = std::move(n);
    }
    return left;
  }

  absl::StatusOr<NodePtr> Unary(int depth) {
    if (absl::Status st = CheckDepth(depth); !st.ok()) return st;
    const Token& t = Peek();
    if (t.kind == Tok::kPlus || t.kind == Tok::kMinus) {
      bool minus = t.kind == Tok::kMinus;
      uint32_t pos = t.pos;
      Take();
      auto operand = Unary(depth + 1);
      if (!operand.ok() || !minus) return operand;
      NodePtr o = std::move(*operand);
      if (o->kind == NodeKind::kLiteral) {
        // Fold -literal so that -5 is an Integer literal.
        switch (o->literal.kind()) {
          case Item::Kind::kInteger:
            o->literal = Item::MakeInteger(-o->literal.integer());
            return o;
          case Item::Kind::kDecimal:
            o->literal = Item::MakeDecimal(DecNegate(o->literal.decimal()));
            return o;
          case Item::Kind::kQuantity: {
            Quantity q = o->literal.quantity();
            q.value = DecNegate(q.value);
            o->literal = Item::MakeQuantity(std::move(q));
            return o;
          }
          default:
            break;
        }
      }
      NodePtr n = Make(NodeKind::kNegate, pos);
      if (absl::Status st = Adopt(n.get(), std::move(o)); !st.ok()) return st;
      return n;
    }
    return Postfix(depth);
  }

  absl::StatusOr<NodePtr> Postfix(int depth) {
    auto term = Term(depth);
    if (!term.ok()) return term;
    NodePtr left = std::move(*term);
    while (true) {
      const Token& t = Peek();
      if (t.kind == Tok::kDot) {
        uint32_t pos = Take().pos;
        auto rhs = Invocation(depth, /*after_dot=*/true);
        if (!rhs.ok()) return rhs;
        NodePtr n = Make(NodeKind::kInvoke, pos);
        if (absl::Status st = Adopt(n.get(), std::move(left)); !st.ok()) return st;
        if (absl::Status st = Adopt(n.get(), std::move(*rhs)); !st.ok()) return st;
        left = std::move(n);
      } else if (t.kind == Tok::kLBracket) {
        uint32_t pos = Take().pos;
        auto index = Expr(0, depth + 1);
        if (!index.ok()) return index;
        if (Peek().kind != Tok::kRBracket) return Error(Peek().pos, "expected ']'");
        Take();
        NodePtr n = Make(NodeKind::kIndexer, pos);
        if (absl::Status st = Adopt(n.get(), std::move(left)); !st.ok()) return st;
        if (absl::Status st = Adopt(n.get(), std::move(*index)); !st.ok()) return st;
        left = std::move(n);
      } else {
        return left;
      }
    }
  }

  absl::StatusOr<NodePtr> Term(int depth) {
    if (absl::Status st = CheckDepth(depth); !st.ok()) return st;
    const Token& t = Peek();
    switch (t.kind) {
      case Tok::kLParen: {
        Take();
        auto e = Expr(0, depth + 1);
        if (!e.ok()) return e;
        if (Peek().kind != Tok::kRParen) return Error(Peek().pos, "expected ')'");
        Take();
        return e;
      }
      case Tok::kLBrace: {
        uint32_t pos = Take().pos;
        if (Peek().kind != Tok::kRBrace) return Error(Peek().pos, "expected '}'");
        Take();
        return Make(NodeKind::kEmpty, pos);
      }
      case Tok::kString: {
        const Token& s = Take();
        NodePtr n = Make(NodeKind::kLiteral, s.pos);
        n->name = s.value;
        n->literal = Item::MakeStringView(n->name);
        return n;
      }
      case Tok::kNumber:
        return Number();
      case Tok::kDate:
      case Tok::kDateTime:
      case Tok::kTime: {
        const Token& d = Take();
        std::optional<Temporal> value;
        if (d.kind == Tok::kTime) {
          value = Temporal::ParseTime(d.text.substr(1));
        } else if (d.kind == Tok::kDateTime) {
          value = Temporal::ParseDateTime(d.text);
        } else {
          value = Temporal::ParseDate(d.text);
        }
        if (!value) return Error(d.pos, Cat("invalid date/time literal '@", d.text, "'"));
        NodePtr n = Make(NodeKind::kLiteral, d.pos);
        n->literal = Item::MakeTemporal(*value);
        return n;
      }
      case Tok::kPercent: {
        uint32_t pos = Take().pos;
        const Token& name = Take();
        if (name.kind != Tok::kIdent && name.kind != Tok::kDelimited && name.kind != Tok::kString) {
          return Error(name.pos, "expected a variable name after '%'");
        }
        NodePtr n = Make(NodeKind::kVariable, pos);
        n->name = name.kind == Tok::kIdent ? std::string(name.text) : name.value;
        return n;
      }
      case Tok::kSpecial:
      case Tok::kIdent:
      case Tok::kDelimited:
        if (t.kind == Tok::kIdent && (t.text == "true" || t.text == "false")) {
          NodePtr n = Make(NodeKind::kLiteral, t.pos);
          n->literal = Item::MakeBoolean(t.text == "true");
          Take();
          return n;
        }
        return Invocation(depth);
      case Tok::kEnd:
        return Error(t.pos, "unexpected end of expression");
      default:
        return Error(t.pos, Cat("unexpected '", t.text, "'"));
    }
  }

  absl::StatusOr<NodePtr> Number() {
    const Token& t = Take();
    NodePtr n = Make(NodeKind::kLiteral, t.pos);
    bool decimal = t.text.find('.') != std::string_view::npos;
    std::optional<Decimal> dec;
    if (decimal) {
      dec = Decimal::Parse(t.text);
      if (!dec) return Error(t.pos, "decimal literal out of range");
      n->literal = Item::MakeDecimal(*dec);
    } else {
      int64_t v = 0;
      auto [p, ec] = std::from_chars(t.text.data(), t.text.data() + t.text.size(), v);
      if (ec != std::errc() || p != t.text.data() + t.text.size()) {
        return Error(t.pos, "integer literal out of range");
      }
      n->literal = Item::MakeInteger(v);
      dec = Decimal::FromInt(v);
    }
    // Quantity: NUMBER followed by a unit string or a calendar duration keyword.
    const Token& u = Peek();
    if (u.kind == Tok::kString || (u.kind == Tok::kIdent && IsCalendarKeyword(u.text))) {
      Quantity q;
      q.value = *dec;
      q.calendar = u.kind == Tok::kIdent;
      q.unit = q.calendar ? std::string(u.text) : u.value;
      Take();
      n->literal = Item::MakeQuantity(std::move(q));
    }
    return n;
  }

  absl::StatusOr<NodePtr> Invocation(int depth, bool after_dot = false) {
    const Token& t = Take();
    if (t.kind == Tok::kSpecial) {
      NodeKind k = t.text == "$this"    ? NodeKind::kThis
                   : t.text == "$index" ? NodeKind::kIndex
                                        : NodeKind::kTotal;
      return Make(k, t.pos);
    }
    if (t.kind != Tok::kIdent && t.kind != Tok::kDelimited) {
      return Error(t.pos, "expected an identifier or function");
    }
    // After a dot no operator can follow, so keywords are names there (text.div).
    if (t.kind == Tok::kIdent && !after_dot && IsKeywordOperator(t.text)) {
      return Error(t.pos, Cat("unexpected keyword '", t.text, "'"));
    }
    std::string name = t.kind == Tok::kIdent ? std::string(t.text) : t.value;
    uint32_t pos = t.pos;
    if (Peek().kind != Tok::kLParen) {
      NodePtr n = Make(NodeKind::kMember, pos);
      n->name = std::move(name);
      return n;
    }
    Take();
    NodePtr n = Make(NodeKind::kFunction, pos);
    n->name = std::move(name);
    if (Peek().kind != Tok::kRParen) {
      while (true) {
        auto arg = Expr(0, depth + 1);
        if (!arg.ok()) return arg;
        if (absl::Status st = Adopt(n.get(), std::move(*arg)); !st.ok()) return st;
        if (Peek().kind == Tok::kComma) {
          Take();
          continue;
        }
        break;
      }
    }
    if (Peek().kind != Tok::kRParen) return Error(Peek().pos, "expected ')' or ','");
    Take();
    if (absl::Status st = ResolveFunction(n.get()); !st.ok()) return st;
    return n;
  }

  absl::Status ResolveFunction(AstNode* n) {
    const FunctionDef* fn = FindFunction(n->name);
    if (fn == nullptr) return Error(n->pos, Cat("unknown function '", n->name, "'"));
    if (n->args.size() < fn->min_args || (fn->max_args != 255 && n->args.size() > fn->max_args)) {
      return Error(n->pos, Cat("wrong number of arguments for ", n->name, "()"));
    }
    n->fn = fn;
    if (fn->type_argument) {
      // is(T), as(T), ofType(T): the argument is a type specifier, not an expression.
      const AstNode* a = n->args[0].get();
      std::string ns, name;
      if (a->kind == NodeKind::kMember) {
        name = a->name;
      } else if (a->kind == NodeKind::kInvoke && a->args[0]->kind == NodeKind::kMember &&
                 a->args[1]->kind == NodeKind::kMember) {
        ns = a->args[0]->name;
        name = a->args[1]->name;
      } else {
        return Error(a->pos, Cat("expected a type name as argument of ", n->name, "()"));
      }
      auto spec = ResolveType(ns, name, a->pos);
      if (!spec.ok()) return spec.status();
      n->type = std::move(*spec);
      n->args.clear();
    }
    if ((n->name == "matches" || n->name == "matchesFull" || n->name == "replaceMatches") &&
        n->args[0]->kind == NodeKind::kLiteral &&
        n->args[0]->literal.kind() == Item::Kind::kString) {
      auto re = CompileRegex(n->args[0]->literal.string(), 4096, n->name == "matches");
      if (!re.ok()) return Error(n->args[0]->pos, std::string(re.status().message()));
      n->regex = std::move(*re);
    }
    if (n->name == "sort") {
      for (auto& arg : n->args) {
        if (arg->kind == NodeKind::kNegate) {
          NodePtr inner = std::move(arg->args[0]);
          inner->descending = true;
          arg = std::move(inner);
        }
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<TypeSpec> TypeSpecifier() {
    const Token& first = Take();
    if (first.kind != Tok::kIdent && first.kind != Tok::kDelimited) {
      return Error(first.pos, "expected a type name");
    }
    std::string ns;
    std::string name = first.kind == Tok::kIdent ? std::string(first.text) : first.value;
    if (Peek().kind == Tok::kDot &&
        (Peek(1).kind == Tok::kIdent || Peek(1).kind == Tok::kDelimited)) {
      Take();
      const Token& second = Take();
      ns = std::move(name);
      name = second.kind == Tok::kIdent ? std::string(second.text) : second.value;
    }
    return ResolveType(ns, name, first.pos);
  }

  absl::StatusOr<TypeSpec> ResolveType(const std::string& ns, const std::string& name,
                                       uint32_t pos) {
    TypeSpec spec;
    spec.name = name;
    if (ns.empty()) {
      spec.ns = TypeSpec::Ns::kAny;
    } else if (ns == "System") {
      spec.ns = TypeSpec::Ns::kSystem;
    } else if (ns == "FHIR") {
      spec.ns = TypeSpec::Ns::kFhir;
    } else {
      return Error(pos, Cat("unknown type namespace '", ns, "'"));
    }
    if (spec.ns != TypeSpec::Ns::kFhir) {
      for (const SystemTypeName& s : kSystemTypes) {
        if (s.name == name) spec.system = s.kind;
      }
    }
    if (spec.ns != TypeSpec::Ns::kSystem) spec.fhir = Model::R4().FindType(name);
    // Unknown names that cannot be typos of R4 types match nothing: System.X, and capitalised
    // names (resources of other FHIR versions: the R4 definitions' dom-r4b names R4B types).
    // An unknown lower-case name (string1) is an error.
    bool capitalised = !name.empty() && name[0] >= 'A' && name[0] <= 'Z';
    if (spec.fhir == nullptr && !spec.system && spec.ns != TypeSpec::Ns::kSystem && !capitalised) {
      return Error(pos, Cat("unknown type '", ns.empty() ? "" : ns + ".", name, "'"));
    }
    return spec;
  }

  std::string_view text_;
  std::vector<Token> tokens_;
  const ParseOptions& options_;
  size_t i_ = 0;
};

// Arguments evaluated per input item with their own $this (not in the caller's frame).
bool IsLambdaArgument(std::string_view fn, size_t i) {
  if (fn == "where" || fn == "select" || fn == "exists" || fn == "all" || fn == "repeat" ||
      fn == "aggregate") {
    return i == 0;
  }
  if (fn == "trace") return i == 1;
  return fn == "sort" || fn == "iif";
}

// Finds the subexpressions worth memoizing per evaluation (see AstNode::memo_slot).
class MemoPlanner {
 public:
  explicit MemoPlanner(Ast* ast) : ast_(ast) {}
  void Run() { Visit(ast_->root.get(), false); }

 private:
  struct Info {
    bool context_free = false;  // independent of the input, $this, $index and $total
    bool uses_index_total = false;
    std::string key;  // structural key: equal keys, equal subexpressions
  };

  Info Visit(AstNode* n, bool in_lambda) {
    std::vector<Info> args;
    args.reserve(n->args.size());
    for (size_t i = 0; i < n->args.size(); ++i) {
      bool lambda = n->kind == NodeKind::kFunction && IsLambdaArgument(n->name, i);
      args.push_back(Visit(n->args[i].get(), in_lambda || lambda));
    }
    Info info;
    info.uses_index_total = n->kind == NodeKind::kIndex || n->kind == NodeKind::kTotal;
    for (const Info& a : args) info.uses_index_total |= a.uses_index_total;
    bool all_args =
        std::all_of(args.begin(), args.end(), [](const Info& a) { return a.context_free; });
    switch (n->kind) {
      case NodeKind::kLiteral:
      case NodeKind::kEmpty:
      case NodeKind::kVariable:
        info.context_free = true;
        break;
      case NodeKind::kInvoke:
        info.context_free = args[0].context_free && RhsContextFree(*n->args[1], args[1]);
        break;
      case NodeKind::kBinary:
      case NodeKind::kIndexer:
      case NodeKind::kNegate:
      case NodeKind::kIs:
      case NodeKind::kAs:
        info.context_free = all_args;
        break;
      default:  // $this, $index, $total, and terms applied to the input
        break;
    }
    // The structural key covers every node: two invocations differ by their right sides
    // even when those are not context-free on their own.
    info.key = Cat(static_cast<int>(n->kind), ":", n->name, ":", static_cast<int>(n->op), ":",
                   n->descending ? "d" : "", ":", n->type.name, ":",
                   n->kind == NodeKind::kLiteral ? ToDebugString(n->literal) : "", "(");
    for (const Info& a : args) info.key += a.key + ",";
    info.key += ")";
    if (info.context_free && in_lambda && n->kind == NodeKind::kInvoke) {
      auto [it, added] = slots_.emplace(info.key, ast_->memo_slots);
      if (added) ++ast_->memo_slots;
      n->memo_slot = it->second;
    }
    return info;
  }

  // The right side of an invocation takes its input from the left side: it is context-free
  // when its own arguments are (lambda arguments only must not read an outer $index/$total).
  bool RhsContextFree(const AstNode& rhs, const Info& rhs_info) {
    if (rhs.kind == NodeKind::kMember) return true;
    if (rhs.kind != NodeKind::kFunction) return false;
    for (size_t i = 0; i < rhs.args.size(); ++i) {
      if (IsLambdaArgument(rhs.name, i)) {
        if (HasIndexOrTotal(*rhs.args[i])) return false;
      } else if (!ContextFree(*rhs.args[i])) {
        return false;
      }
    }
    return true;
  }

  static bool HasIndexOrTotal(const AstNode& n) {
    if (n.kind == NodeKind::kIndex || n.kind == NodeKind::kTotal) return true;
    for (const auto& a : n.args) {
      if (HasIndexOrTotal(*a)) return true;
    }
    return false;
  }

  bool ContextFree(const AstNode& n) {
    switch (n.kind) {
      case NodeKind::kLiteral:
      case NodeKind::kEmpty:
      case NodeKind::kVariable:
        return true;
      case NodeKind::kInvoke:
        return ContextFree(*n.args[0]) && RhsContextFree(*n.args[1], Info());
      case NodeKind::kBinary:
      case NodeKind::kIndexer:
      case NodeKind::kNegate:
      case NodeKind::kIs:
      case NodeKind::kAs:
        return std::all_of(n.args.begin(), n.args.end(),
                           [this](const auto& a) { return ContextFree(*a); });
      default:
        return false;
    }
  }

  Ast* ast_;
  std::unordered_map<std::string, int32_t> slots_;
};

}  // namespace
}  // namespace internal

absl::StatusOr<Expression> Expression::Parse(std::string_view text, const ParseOptions& options) {
  if (text.size() > options.max_length) {
    return absl::InvalidArgumentError("fhirpath: expression too long");
  }
  std::vector<internal::Token> tokens;
  if (absl::Status st = internal::Lexer(text).Run(&tokens); !st.ok()) return st;
  auto ast = std::make_shared<internal::Ast>();
  ast->text = std::string(text);
  // Token views point into `text`; the parser copies what it keeps into the AST.
  auto root = internal::Parser(text, std::move(tokens), options).Parse();
  if (!root.ok()) return root.status();
  ast->root = std::move(*root);
  internal::MemoPlanner(ast.get()).Run();
  return Expression(std::move(ast));
}

const std::string& Expression::text() const { return ast_->text; }

}  // namespace fhirward::fhir::fhirpath

namespace fhirward::fhir::fhirpath::internal {

std::string Position(std::string_view text, size_t pos) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < pos && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return Cat(line, ":", col);
}

}  // namespace fhirward::fhir::fhirpath::internal

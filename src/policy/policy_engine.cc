// The PolicyEngine: roles x scopes x permissions, deny rules with attribute
// conditions, relationships to patients, consent, labels, masking and
// break-glass. See policy.h for the two-step contract and docs/policy.md for
// the semantics.
#include <algorithm>
#include <map>
#include <set>

#include "fhir/resources.h"
#include "policy/internal/scopes.h"
#include "policy/obligations.h"
#include "policy/policy.h"

namespace fhirward::policy {
namespace {

using internal::Grants;
using internal::IsSharedReferenceType;
using internal::IsWrite;
using internal::LetterFor;

bool Contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// The permission interaction name: InteractionName, except "search" for
// search-type and "history" for the three histories.
std::string_view PermissionName(Interaction i) {
  if (i == Interaction::kSearch) return "search";
  if (i == Interaction::kHistoryInstance || i == Interaction::kHistoryType ||
      i == Interaction::kHistorySystem) {
    return "history";
  }
  return InteractionName(i);
}

// "Practitioner/p1" from "Practitioner/p1" or "https://host/fhir/Practitioner/p1".
std::string ActorReference(std::string_view fhir_user) {
  size_t last = fhir_user.rfind('/');
  if (last == std::string_view::npos || last == 0 || last + 1 == fhir_user.size()) return "";
  size_t prev = fhir_user.rfind('/', last - 1);
  std::string_view ref = prev == std::string_view::npos ? fhir_user : fhir_user.substr(prev + 1);
  size_t slash = ref.find('/');
  if (!fhir::IsResourceType(ref.substr(0, slash)) || !fhir::IsValidId(ref.substr(slash + 1))) {
    return "";
  }
  return std::string(ref);
}

bool Holds(const Conditions& c, const Principal& p, const Environment& env, int offset_minutes) {
  const int64_t local = env.now + int64_t{offset_minutes} * 60;
  const int64_t day = local >= 0 ? local / 86400 : (local - 86399) / 86400;
  if (c.hours) {
    const int minute = static_cast<int>((local - day * 86400) / 60);
    const auto [start, end] = *c.hours;
    const bool in =
        start < end ? (minute >= start && minute < end) : (minute >= start || minute < end);
    if (!in) return false;
  }
  if (!c.weekdays.empty()) {
    const int weekday = static_cast<int>(((day % 7) + 7 + 4) % 7);  // 1970-01-01: Thursday
    if (std::find(c.weekdays.begin(), c.weekdays.end(), weekday) == c.weekdays.end()) return false;
  }
  if (!c.networks.empty()) {
    bool in = false;
    for (const Cidr& n : c.networks) in = in || CidrContains(n, env.client_address);
    if (!in) return false;
  }
  if (!c.purpose_of_use.empty()) {
    bool any = false;
    for (const auto& code : p.purpose_of_use) any = any || Contains(c.purpose_of_use, code);
    if (!any) return false;
  }
  return true;
}

struct CompiledRole {
  const Role* role = nullptr;
  std::vector<ResourceScope> patterns;
};

// A denial's weight: the most telling reason across roles is reported.
enum Weight { kNoScope = 1, kNoPermission = 2, kRelationship = 3, kRuleDeny = 4, kFacts = 5 };

struct Candidate {
  Decision decision;
  int weight = 0;
};

class Engine final : public PolicyEngine {
 public:
  Engine(std::shared_ptr<const PolicySet> policy, PolicyFacts* facts)
      : policy_(std::move(policy)), facts_(facts) {
    for (const Role& r : policy_->roles) {
      CompiledRole c;
      c.role = &r;
      for (const auto& text : r.scopes) {
        if (auto s = ParseResourceScope(text); s && !s->restricted) c.patterns.push_back(*s);
      }
      roles_.emplace(r.name, std::move(c));
    }
  }

  std::shared_ptr<const PolicySet> policy() const override { return policy_; }

  Decision Authorize(const Principal& p, const AccessRequest& req,
                     const Environment& env) const override {
    Decision deny;
    deny.policy_id = policy_->IdVersion();
    if (req.interaction == Interaction::kCapabilities) {
      deny.allow = true;
      deny.rule = "public";
      return deny;
    }
    const std::vector<std::string>& names =
        p.has_roles_claim && !policy_->ignore_token_roles ? p.roles : policy_->default_roles;
    Candidate best;
    best.decision = deny;
    best.decision.reason = "no_role";
    best.decision.deny_code = ErrorCode::kForbidden;
    for (const std::string& name : names) {
      auto it = roles_.find(name);
      if (it == roles_.end()) continue;
      Candidate c = ForRole(it->second, p, req, env);
      if (c.decision.allow) return std::move(c.decision);
      if (c.weight > best.weight) best = std::move(c);
    }
    return std::move(best.decision);
  }

  Decision AuthorizeResource(const Principal& p, const Decision& decision, Interaction interaction,
                             const ResourceFacts& r, const Environment& env) const override {
    Decision d = decision;
    if (!decision.allow) return d;
    const Obligations& ob = decision.obligations;
    static const std::vector<std::string> kNone;
    const std::vector<std::string>& patients = r.patients ? *r.patients : kNone;
    auto refuse = [&](std::string reason, std::string rule = "") {
      d.allow = false;
      d.deny_code = ErrorCode::kForbidden;
      d.reason = std::move(reason);
      if (!rule.empty()) d.rule = std::move(rule);
      return d;
    };
    if (ob.confined()) {
      bool in_own = false;
      for (const auto& pt : patients) in_own = in_own || ob.Allows(pt);
      if (r.type == "Patient" && !r.id.empty() && !ob.Allows(r.id)) {
        // A Patient is in the compartments of the patients it links to, but
        // it is another person's record: only the patients themselves.
        in_own = false;
      }
      if (in_own && IsWrite(interaction)) {
        // A write must stay inside the records the principal may reach: a
        // resource that also lands in another patient's compartment would
        // put data into that chart.
        for (const auto& pt : patients) {
          if (!ob.Allows(pt)) return refuse("write_reaches_another_patient_compartment");
        }
      } else if (!in_own) {
        // Types outside the Patient compartment (Medication, Organization,
        // ...) are shared reference data: readable, not writable.
        if (r.in_compartment_definition || r.type == "Patient" || !IsSharedReferenceType(r.type) ||
            IsWrite(interaction)) {
          return refuse("outside_patient_compartment");
        }
      }
    }
    if (r.labels && !ob.denied_labels.empty()) {
      for (const auto& label : *r.labels) {
        if (Contains(ob.denied_labels, label)) return refuse("security_label:" + label);
      }
    }
    if (ob.consent && !patients.empty()) {
      if (!facts_) return refuse("consent_unavailable");
      ConsentRequest cr;
      cr.actors = ob.consent_actors;
      cr.purposes = p.purpose_of_use;
      cr.now = env.now;
      cr.resource_type = std::string(r.type);
      if (r.labels) cr.labels = *r.labels;
      std::set<std::string> seen;
      for (const auto& pt : patients) {
        if (!seen.insert(pt).second) continue;
        auto consents = facts_->Consents(pt);
        if (!consents.ok()) return refuse("consent_unavailable");
        if (consents->empty()) continue;
        ConsentVerdict v = EvaluateConsents(*consents, cr);
        if (v.kind == ConsentVerdict::Kind::kDeny) {
          return refuse("consent_denied", "Consent/" + v.consent_id);
        }
      }
    }
    return d;
  }

 private:
  // The effective scope grant: a token scope and a role pattern of the same
  // context that both grant `letter` on `type`. Reports which contexts grant.
  struct ScopeGrant {
    const ResourceScope* patient = nullptr;  // a patient/ scope grants
    const ResourceScope* broad = nullptr;    // a user/ or system/ scope grants
  };
  static ScopeGrant EffectiveScopes(const CompiledRole& role, const Principal& p,
                                    std::string_view type, char letter) {
    ScopeGrant g;
    auto matches = [&](const ResourceScope& s) {
      if (s.restricted) return false;  // v2 restrictions are not enforced: never grant on them
      if (s.type != "*" && s.type != type) return false;
      return Grants(s, letter);
    };
    for (const auto& s : p.scopes) {
      if (!matches(s)) continue;
      bool bound = false;
      for (const auto& pat : role.patterns) {
        if (pat.context == s.context && matches(pat)) {
          bound = true;
          break;
        }
      }
      if (!bound) continue;
      if (s.context == ResourceScope::Context::kPatient) {
        if (!g.patient) g.patient = &s;
      } else if (!g.broad) {
        g.broad = &s;
      }
    }
    return g;
  }

  static bool PermissionGrants(const Role& role, std::string_view type, std::string_view perm,
                               std::string* which) {
    for (const auto& pm : role.permissions) {
      if (pm.type != "*" && pm.type != type) continue;
      if (pm.interaction != "*" && pm.interaction != perm) continue;
      *which = pm.type + "." + pm.interaction;
      return true;
    }
    return false;
  }

  Candidate ForRole(const CompiledRole& cr, const Principal& p, const AccessRequest& req,
                    const Environment& env) const {
    const Role& role = *cr.role;
    Candidate c;
    Decision& d = c.decision;
    d.policy_id = policy_->IdVersion();
    d.role = role.name;
    auto deny = [&](Weight w, ErrorCode code, std::string reason, std::string rule = "") {
      d.allow = false;
      d.deny_code = code;
      d.reason = std::move(reason);
      d.rule = std::move(rule);
      c.weight = w;
      return c;
    };
    const char letter = LetterFor(req.interaction);
    const std::string_view type =
        req.resource_type.empty() ? std::string_view("*") : std::string_view(req.resource_type);
    const std::string_view perm = PermissionName(req.interaction);

    ScopeGrant g = EffectiveScopes(cr, p, type, letter);
    if (!g.patient && !g.broad) {
      return deny(kNoScope, ErrorCode::kInsufficientScope,
                  "no scope grants " + std::string(1, letter) + " on " + std::string(type) +
                      " for role " + role.name);
    }
    std::string permission;
    if (!PermissionGrants(role, type, perm, &permission)) {
      return deny(kNoPermission, ErrorCode::kForbidden,
                  "role " + role.name + " lacks " + std::string(type) + "." + std::string(perm));
    }
    for (const Rule& rule : policy_->rules) {
      if (!rule.roles.empty() && !Contains(rule.roles, role.name)) continue;
      // A typed rule also governs system-level interactions (type "*"), whose
      // results may include its types.
      if (!rule.types.empty() && type != "*" && !Contains(rule.types, type)) continue;
      if (!rule.interactions.empty() && !Contains(rule.interactions, perm)) continue;
      if (!rule.when.empty() && !Holds(rule.when, p, env, policy_->utc_offset_minutes)) continue;
      if (!rule.unless.empty() && Holds(rule.unless, p, env, policy_->utc_offset_minutes)) continue;
      return deny(kRuleDeny, ErrorCode::kForbidden, "denied_by_rule", "rule:" + rule.id);
    }
    const ResourceScope* scope = g.broad ? g.broad : g.patient;
    d.rule = "role:" + role.name + " permission:" + permission + " scope:" + scope->text;

    // Patients: what the scopes allow, intersected with the relationship.
    std::optional<std::vector<std::string>> patients;
    if (!g.broad) {
      if (p.patient.empty()) {
        return deny(kRelationship, ErrorCode::kForbidden, "patient_scope_without_patient_context",
                    scope->text);
      }
      patients = std::vector<std::string>{p.patient};
    }
    const std::string actor = ActorReference(p.fhir_user);
    Obligations& ob = d.obligations;
    std::optional<BreakGlassEpisode> opening;
    if (role.relationship != Relationship::kCare &&
        !(env.break_glass_reason.empty() && p.break_glass_reason.empty())) {
      // Only care relationships can be lifted: a justification sent under
      // any other role is refused, not silently ignored.
      return deny(kRuleDeny, ErrorCode::kForbidden, "break_glass_not_permitted", "break-glass");
    }
    switch (role.relationship) {
      case Relationship::kNone:
      case Relationship::kScopes:
        break;
      case Relationship::kSelf: {
        std::string self;
        if (actor.rfind("Patient/", 0) == 0) self = actor.substr(8);
        if (self.empty()) self = p.patient;
        if (self.empty()) {
          return deny(kRelationship, ErrorCode::kForbidden, "no_patient_identity");
        }
        if (patients && (*patients)[0] != self) {
          return deny(kRelationship, ErrorCode::kForbidden, "launch_patient_is_not_self");
        }
        patients = std::vector<std::string>{self};
        break;
      }
      case Relationship::kCare: {
        // Break-glass: an open episode, or a request that opens one, lifts
        // the relationship (not the scopes) for a limited time.
        auto episode = BreakGlass(role, p, env, &c);
        if (!episode.ok()) return c;
        if (*episode && IsWrite(req.interaction)) {
          // Break-glass lifts the relationship for reading and charting, never
          // for writing the resources relationships are made of: an Encounter
          // or CareTeam written during an episode would outlast it.
          for (const auto& source : policy_->relationships) {
            if (source.type == type) {
              return deny(kRuleDeny, ErrorCode::kForbidden,
                          "break_glass_cannot_write_relationship_sources", "break-glass");
            }
          }
        }
        if (*episode) {
          if ((*episode)->id.empty()) {
            opening = std::move(**episode);  // opened below, once nothing else denies
          } else {
            ob.break_glass_episode = (*episode)->id;
            ob.break_glass_reason = (*episode)->reason;
          }
          break;
        }
        if (!facts_) return deny(kFacts, ErrorCode::kForbidden, "relationships_unavailable");
        std::vector<std::string> related;
        if (actor.rfind("Practitioner/", 0) == 0) {
          for (const auto& source : policy_->relationships) {
            auto got = facts_->RelatedPatients(source, actor);
            if (!got.ok()) {
              return deny(kFacts, ErrorCode::kUnavailable, "relationships_unavailable");
            }
            related.insert(related.end(), got->begin(), got->end());
          }
        }
        std::sort(related.begin(), related.end());
        related.erase(std::unique(related.begin(), related.end()), related.end());
        if (patients) {
          const bool in = std::binary_search(related.begin(), related.end(), (*patients)[0]);
          if (!in) {
            return deny(kRelationship, ErrorCode::kForbidden, "no_relationship_to_patient");
          }
        } else {
          patients = std::move(related);
        }
        break;
      }
    }
    if (patients && type != "*" && type != "Patient" &&
        !fhir::InPatientCompartmentDefinition(type) && !IsSharedReferenceType(type)) {
      // A type neither confinable nor shared reference data is out of reach:
      // searching it would list every patient's resources of that type.
      return deny(kRelationship, ErrorCode::kForbidden, "type_outside_patient_scope", d.rule);
    }
    if (opening) {
      // Every other check passed: the request opens the episode (a dry run
      // only reports that it would).
      if (env.dry_run) {
        ob.break_glass_episode = "(not opened: explain)";
        ob.break_glass_reason = opening->reason;
      } else {
        auto opened = facts_->OpenBreakGlass(std::move(*opening));
        if (!opened.ok()) {
          return deny(kFacts, ErrorCode::kUnavailable, "break_glass_unavailable", "break-glass");
        }
        ob.break_glass_episode = opened->id;
        ob.break_glass_reason = opened->reason;
        ob.alert = true;
      }
    }
    const bool lists =
        req.interaction == Interaction::kSearch || req.interaction == Interaction::kHistoryType;
    if (lists && role.consent && ob.break_glass_episode.empty() && facts_ && type != "*" &&
        (type == "Patient" || fhir::InPatientCompartmentDefinition(type))) {
      // Consents narrow lists themselves, so that counts and pages never
      // include what they deny: a patient whose consents deny this accessor
      // the type leaves the confinement (or, for an unconfined principal, is
      // excluded); one whose consents deny some security labels has those
      // resources excluded. The per-resource check stays the final gate. (A
      // consent that denies the type but permits some labels is narrowed as
      // a denial of the type: such resources are readable one by one, not
      // listed.) Only lists need this: a single resource gets the
      // per-resource check.
      ConsentRequest cr;
      if (!actor.empty()) cr.actors = {actor};
      cr.purposes = p.purpose_of_use;
      cr.now = env.now;
      cr.resource_type = std::string(type);
      std::vector<std::string> candidates;
      if (patients) {
        candidates = *patients;
      } else {
        auto with_consents = facts_->ConsentPatients();
        if (!with_consents.ok()) {
          return deny(kFacts, ErrorCode::kUnavailable, "consent_unavailable");
        }
        candidates = std::move(*with_consents);
      }
      std::vector<std::string> kept;
      for (const auto& pt : candidates) {
        auto consents = facts_->Consents(pt);
        if (!consents.ok()) return deny(kFacts, ErrorCode::kUnavailable, "consent_unavailable");
        if (consents->empty()) {
          kept.push_back(pt);
          continue;
        }
        cr.labels.clear();
        if (EvaluateConsents(*consents, cr).kind == ConsentVerdict::Kind::kDeny) {
          if (!patients) ob.consent_excluded_patients.push_back(pt);
          continue;
        }
        std::vector<std::string> hidden;
        for (const auto& consent : *consents) {
          for (auto& label : ConsentLabels(consent)) {
            if (std::find(hidden.begin(), hidden.end(), label) != hidden.end()) continue;
            cr.labels = {label};
            if (EvaluateConsents(*consents, cr).kind == ConsentVerdict::Kind::kDeny) {
              hidden.push_back(std::move(label));
            }
          }
        }
        if (!hidden.empty()) {
          std::sort(hidden.begin(), hidden.end());
          ob.consent_hidden_labels.emplace_back(pt, std::move(hidden));
        }
        kept.push_back(pt);
      }
      if (patients) patients = std::move(kept);
    }
    ob.patients = std::move(patients);
    ob.masked = role.masked;
    // The narrative may repeat any masked element (a name, a birth date):
    // it is masked with them.
    for (const auto& path : role.masked) {
      std::string text = path.substr(0, path.find('.')) + ".text";
      if (std::find(ob.masked.begin(), ob.masked.end(), text) == ob.masked.end()) {
        ob.masked.push_back(std::move(text));
      }
    }
    ob.read_only = role.read_only;
    ob.denied_labels = role.denied_labels;
    if (role.consent && ob.break_glass_episode.empty()) {
      ob.consent = true;
      if (!actor.empty()) ob.consent_actors.push_back(actor);
    }
    d.allow = true;
    return c;
  }

  // The break-glass episode covering this request: an open one, or one this
  // request would open (with an empty id; the caller opens it once nothing
  // else denies). On a refused request sets `c` to the denial and returns an
  // error status.
  absl::StatusOr<std::optional<BreakGlassEpisode>> BreakGlass(const Role& role, const Principal& p,
                                                              const Environment& env,
                                                              Candidate* c) const {
    const BreakGlassPolicy& bg = policy_->break_glass;
    const std::string& reason =
        env.break_glass_reason.empty() ? p.break_glass_reason : env.break_glass_reason;
    auto refuse = [&](Weight w, ErrorCode code, std::string why) {
      c->decision.allow = false;
      c->decision.deny_code = code;
      c->decision.reason = std::move(why);
      c->decision.rule = "break-glass";
      c->weight = w;
      return absl::StatusOr<std::optional<BreakGlassEpisode>>(
          absl::PermissionDeniedError(c->decision.reason));
    };
    if (!bg.enabled || !role.break_glass) {
      if (!reason.empty())
        return refuse(kRuleDeny, ErrorCode::kForbidden, "break_glass_not_permitted");
      return std::optional<BreakGlassEpisode>();
    }
    if (!facts_) {
      if (!reason.empty()) return refuse(kFacts, ErrorCode::kForbidden, "break_glass_unavailable");
      return std::optional<BreakGlassEpisode>();
    }
    auto open = facts_->ActiveBreakGlass(p.issuer, p.subject, p.client_id, env.now);
    if (!open.ok()) return refuse(kFacts, ErrorCode::kUnavailable, "break_glass_unavailable");
    if (*open) return open;
    if (reason.empty()) return std::optional<BreakGlassEpisode>();
    std::string purposes;
    bool purpose_ok = false;
    for (const auto& code : p.purpose_of_use) {
      if (Contains(bg.purposes, code)) purpose_ok = true;
      if (!purposes.empty()) purposes += ' ';
      purposes += code;
    }
    if (!purpose_ok)
      return refuse(kRuleDeny, ErrorCode::kForbidden, "break_glass_needs_purpose_of_use");
    if (reason.size() < bg.min_justification) {
      return refuse(kRuleDeny, ErrorCode::kForbidden, "break_glass_justification_too_short");
    }
    BreakGlassEpisode e;
    e.issuer = p.issuer;
    e.subject = p.subject;
    e.client_id = p.client_id;
    e.role = role.name;
    e.reason = reason;
    e.purposes = purposes;
    e.started = env.now;
    e.expires = env.now + bg.duration_seconds;
    return std::optional<BreakGlassEpisode>(std::move(e));  // id empty: to be opened
  }

  std::shared_ptr<const PolicySet> policy_;
  PolicyFacts* facts_;
  std::map<std::string, CompiledRole, std::less<>> roles_;
};

// Evaluates a candidate policy beside the enforced one; reports disagreements.
class ShadowEngine final : public PolicyEngine {
 public:
  ShadowEngine(std::unique_ptr<PolicyEngine> enforced, std::unique_ptr<PolicyEngine> candidate)
      : enforced_(std::move(enforced)), candidate_(std::move(candidate)) {}

  std::shared_ptr<const PolicySet> policy() const override { return enforced_->policy(); }

  Decision Authorize(const Principal& p, const AccessRequest& req,
                     const Environment& env) const override {
    Decision d = enforced_->Authorize(p, req, env);
    Environment dry = env;
    dry.dry_run = true;  // the candidate never opens break-glass episodes
    Decision s = candidate_->Authorize(p, req, dry);
    d.shadow = Disagreement(d, s);
    return d;
  }

  Decision AuthorizeResource(const Principal& p, const Decision& decision, Interaction interaction,
                             const ResourceFacts& r, const Environment& env) const override {
    return enforced_->AuthorizeResource(p, decision, interaction, r, env);
  }

 private:
  static std::string Disagreement(const Decision& enforced, const Decision& candidate) {
    const auto& a = enforced.obligations;
    const auto& b = candidate.obligations;
    if (enforced.allow == candidate.allow &&
        (!enforced.allow ||
         (a.patients == b.patients && a.masked == b.masked && a.read_only == b.read_only &&
          a.denied_labels == b.denied_labels && a.consent == b.consent &&
          a.consent_hidden_labels == b.consent_hidden_labels &&
          a.consent_excluded_patients == b.consent_excluded_patients))) {
      return "";
    }
    return candidate.Summary();
  }

  std::unique_ptr<PolicyEngine> enforced_;
  std::unique_ptr<PolicyEngine> candidate_;
};

}  // namespace

bool Obligations::Allows(std::string_view patient) const {
  if (!patients) return true;
  return std::find(patients->begin(), patients->end(), patient) != patients->end();
}

std::string Decision::Summary() const {
  std::string s = policy_id + (allow ? " allow" : " deny");
  if (!role.empty()) s += " role=" + role;
  if (!rule.empty()) s += " rule=" + rule;
  if (!allow) {
    s += " reason=" + reason;
    return s;
  }
  if (obligations.patients) s += " patients=" + std::to_string(obligations.patients->size());
  if (!obligations.masked.empty()) s += " masked=" + std::to_string(obligations.masked.size());
  if (!obligations.denied_labels.empty()) {
    s += " hidden-labels=" + std::to_string(obligations.denied_labels.size());
  }
  if (obligations.consent) s += " consent";
  if (!obligations.consent_excluded_patients.empty()) {
    s += " consent-excluded=" + std::to_string(obligations.consent_excluded_patients.size());
  }
  if (!obligations.consent_hidden_labels.empty()) {
    s += " consent-hidden=" + std::to_string(obligations.consent_hidden_labels.size());
  }
  if (!obligations.break_glass_episode.empty()) {
    s += " break-glass=" + obligations.break_glass_episode;
  }
  return s;
}

std::unique_ptr<PolicyEngine> NewPolicyEngine(std::shared_ptr<const PolicySet> policy,
                                              std::shared_ptr<const PolicySet> candidate,
                                              PolicyFacts* facts) {
  auto enforced = std::make_unique<Engine>(std::move(policy), facts);
  if (!candidate) return enforced;
  return std::make_unique<ShadowEngine>(std::move(enforced),
                                        std::make_unique<Engine>(std::move(candidate), facts));
}

std::shared_ptr<const PolicySet> SmartScopesPolicy() {
  static const std::shared_ptr<const PolicySet> kPolicy = [] {
    auto p = std::make_shared<PolicySet>();
    p->id = "smart-scopes";
    p->version = "1";
    p->description = "SMART scopes only";
    Role r;
    r.name = "smart-app";
    r.scopes = {"patient/*.cruds", "user/*.cruds", "system/*.cruds"};
    r.permissions = {{"*", "*"}};
    r.relationship = Relationship::kScopes;
    r.consent = false;
    p->roles.push_back(std::move(r));
    p->default_roles = {"smart-app"};
    p->ignore_token_roles = true;
    return std::shared_ptr<const PolicySet>(std::move(p));
  }();
  return kPolicy;
}

std::vector<std::string> EffectiveRoles(const PolicySet& policy, const Principal& p) {
  const std::vector<std::string>& names =
      p.has_roles_claim && !policy.ignore_token_roles ? p.roles : policy.default_roles;
  std::vector<std::string> out;
  for (const auto& n : names) {
    if (policy.FindRole(n) && !Contains(out, n)) out.push_back(n);
  }
  return out;
}

bool MayExplain(const PolicySet& policy, const Principal& p, const Environment& env) {
  for (const auto& r : EffectiveRoles(policy, p)) {
    if (!Contains(policy.explain_roles, r)) continue;
    bool denied = false;
    for (const Rule& rule : policy.rules) {
      if (!rule.roles.empty() && !Contains(rule.roles, r)) continue;
      if (!rule.types.empty() || !rule.interactions.empty()) continue;
      if (!rule.when.empty() && !Holds(rule.when, p, env, policy.utc_offset_minutes)) continue;
      if (!rule.unless.empty() && Holds(rule.unless, p, env, policy.utc_offset_minutes)) continue;
      denied = true;
      break;
    }
    if (!denied) return true;
  }
  return false;
}

std::optional<Interaction> InteractionFromName(std::string_view name) {
  if (name == "search") return Interaction::kSearch;
  if (name == "history") return Interaction::kHistoryType;
  for (Interaction i : {Interaction::kRead, Interaction::kVread, Interaction::kSearch,
                        Interaction::kHistoryInstance, Interaction::kHistoryType,
                        Interaction::kHistorySystem, Interaction::kCreate, Interaction::kUpdate,
                        Interaction::kPatch, Interaction::kDelete, Interaction::kCapabilities}) {
    if (InteractionName(i) == name) return i;
  }
  return std::nullopt;
}

std::unique_ptr<PolicyEngine> NewScopePolicyEngine() {
  return NewPolicyEngine(SmartScopesPolicy(), nullptr, nullptr);
}

}  // namespace fhirward::policy

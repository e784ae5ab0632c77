import pytest

from gptailor.plan import Op, Plan, PlanError

MEMBERS = ["base", "math", "code"]


def test_text_json_round_trip():
    text = "0:base 1:math 2:drop 3:merge(math=.6,code=.4) 4:merge[ties,density=.3](base=1,code=2) 5:merge[slerp](math=.5,code=.5)"
    plan = Plan.from_text(text, family="tiny")
    assert plan.to_text() == text
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.family == "tiny"
    assert Plan.parse(plan.to_json()) == plan
    assert plan.ops[3] == Op.merge({"math": 0.6, "code": 0.4})
    assert plan.ops[4].density == 0.3 and plan.ops[4].method == "ties"
    assert plan.kept_positions == [0, 1, 3, 4, 5]
    assert plan.validate(MEMBERS, 6) is plan


def test_key_ignores_merge_order_but_not_for_slerp():
    a = Plan.from_text("merge(math=.6,code=.4) base")
    b = Plan.from_text("merge(code=.4,math=.6) base")
    assert a != b and a.key() == b.key()
    assert Plan.from_text("merge[slerp](math=1,code=1)").key() != Plan.from_text("merge[slerp](code=1,math=1)").key()


def test_text_without_indices_and_json_shorthand():
    assert Plan.from_text("base drop math") == Plan.from_text("0:base 1:drop 2:math")
    assert Plan.from_dict({"layers": ["base", "drop", {"op": "pick", "member": "math"}]}).to_text() == "0:base 1:drop 2:math"


@pytest.mark.parametrize("plan,n,msg", [
    ("0:base 1:base", 3, "has 2 positions but the base has 3"),
    ("0:base 1:nope 2:base", 3, "position 1: unknown member 'nope'"),
    ("0:base 1:merge(math=0,code=1) 2:base", 3, "position 1: weight of 'math' is 0.0"),
    ("0:base 1:merge(math=-1,code=1) 2:base", 3, "merge weights must be positive"),
    ("0:drop 1:drop 2:drop", 3, "drops every layer"),
    ("0:base 1:merge[magic](math=1,code=1) 2:base", 3, "position 1: unknown merge method 'magic'"),
    ("0:base 1:merge[slerp](math=1,code=1,base=1) 2:base", 3, "slerp merges exactly two"),
    ("0:base 1:merge(math=1,math=2) 2:base", 3, "appears twice"),
    ("0:base 1:merge[ties,density=2](math=1,code=1) 2:base", 3, "density must be in (0, 1]"),
    ("0:base 1:merge[linear,density=.5](math=1,code=1) 2:base", 3, "position 1: linear takes no density (only ties"),
])
def test_validation_errors_name_the_position(plan, n, msg):
    with pytest.raises(PlanError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Plan.from_text(plan).validate(MEMBERS, n)


@pytest.mark.parametrize("text,msg", [
    ("0:base 2:math", "position 1: entry is numbered 2"),
    ("0:base 1:merge(math)", "needs the form member=weight"),
    ("0:base 1:merge(math=x)", "'x' is not a number"),
    ("0:base 1:me$$", "is not an op"),
    ("   ", "empty"),
])
def test_text_parse_errors(text, msg):
    with pytest.raises(PlanError, match=msg.replace("(", r"\(").replace("$", r"\$")):
        Plan.from_text(text)


@pytest.mark.parametrize("obj,msg", [
    ({"family": "x"}, "'layers' list"),
    ({"layers": [{"op": "grow"}]}, "position 0: unknown op 'grow'"),
    ({"layers": ["base", {"op": "pick"}]}, "position 1: 'pick' needs a 'member'"),
    ({"layers": [{"op": "merge", "weights": {}}]}, "non-empty object"),
    ({"layers": [{"op": "merge", "weights": {"a": "heavy"}}]}, "must be numbers"),
])
def test_json_errors(obj, msg):
    with pytest.raises(PlanError, match=msg):
        Plan.from_dict(obj)


def test_malformed_json_and_wrong_family():
    with pytest.raises(PlanError, match="malformed"):
        Plan.from_json("{nope")
    with pytest.raises(PlanError, match="for family 'a', not 'b'"):
        Plan.from_text("base", family="a").validate(["base"], 1, family="b")


@pytest.mark.parametrize("text,first,not_said", [
    # a single word is one op: the unknown name is the problem, and the message says what a plan is
    ("garbage", "position 0: unknown member 'garbage'; the family has base, math, code. A plan is one op per "
                "layer, 3 in all", "1 position"),
    # the unknown member is named before the count
    ("0:base 1:nosuchmember", "position 1: unknown member 'nosuchmember'", "positions but"),
    ("0:base", "plan has 1 position but the base has 3 layers. A plan is one op per layer", "1 positions"),
])
def test_plan_errors_name_the_first_real_problem(text, first, not_said):
    with pytest.raises(PlanError) as e:
        Plan.parse(text).validate(["base", "math", "code"], 3)
    assert str(e.value).startswith(first) and not_said not in str(e.value)
    assert "e.g. '0:base 1:math 2:drop 3:merge(base=.5,math=.5) ...'" in str(e.value)


def test_dare_plans_read_write_and_validate():
    text = "0:merge[dare_ties,density=.3](math=1,code=.5) 1:merge[dare_linear](math=.7,code=.3) 2:base"
    plan = Plan.from_text(text)
    assert plan.to_text() == text and Plan.from_json(plan.to_json()) == plan
    assert [(op.method, op.density) for op in plan.ops[:2]] == [("dare_ties", 0.3), ("dare_linear", None)]
    assert plan.validate(MEMBERS, 3) is plan
    assert Plan.from_text("merge[dare_ties](math=1,code=1)").key() == Plan.from_text("merge[dare_ties](code=1,math=1)").key()
    with pytest.raises(PlanError, match="density must be in"):
        Plan.from_text("0:merge[dare_linear,density=0](math=1,code=1)").validate(MEMBERS, 1)

from referral_api.access.roles import Role


def test_login_then_me_answers_role_and_org(client, factory):
    user = factory.user(Role.CASEWORKER)
    tokens = factory.login(user)
    assert tokens["token_type"] == "Bearer"
    assert 0 < tokens["expires_in"] <= 900
    response = client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["role"] == "caseworker"
    assert body["organisation"]["id"] == str(user.org_id)
    assert body["email"] == user.email
